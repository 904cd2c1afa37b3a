"""Exceptions that carry the stage contract's exit codes (DESIGN.md, "The stage contract").

0 ok; 1 retryable failure (anything unexpected); 2 bad data or bad request (never retried);
3 a gate was not passed (downstream is skipped, nothing is wrong with the code or the data).
"""


class OneRecError(Exception):
    exit_code = 1


class BadInput(OneRecError, ValueError):
    """The user or the data is wrong: retrying cannot help. One clear line, exit 2."""
    exit_code = 2


class GateFailed(OneRecError):
    """A quality gate said no (e.g. promotion): exit 3 so the orchestrator skips downstream."""
    exit_code = 3
