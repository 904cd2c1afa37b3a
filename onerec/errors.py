"""The stage contract's exit codes (docs/contract.md) and the exceptions that carry them.

Defined once, here: the CLI, the local runner, the Airflow DAGs and the Kubeflow pipeline all map these.
"""

EXIT_OK = 0
EXIT_RETRYABLE = 1    # anything unexpected: the orchestrators retry it
EXIT_BAD_INPUT = 2    # bad data or a bad request: one clear line, never retried
EXIT_GATE = 3         # a gate was not passed: downstream is skipped, nothing is wrong with the code or the data


class OneRecError(Exception):
    exit_code = EXIT_RETRYABLE


class BadInput(OneRecError, ValueError):
    """The user or the data is wrong: retrying cannot help. One clear line, exit 2."""
    exit_code = EXIT_BAD_INPUT


class GateFailed(OneRecError):
    """A quality gate said no (e.g. promotion): exit 3 so the orchestrator skips downstream."""
    exit_code = EXIT_GATE
