"""The `onerec` command line. Kept import-light: heavy modules load inside the command that needs them.

  onerec run <stage> --date D [--config F] [--set k=v ...] [--force]
  onerec pipeline run --start D1 --end D2 [--until STAGE] [--config F] [--set k=v ...] [--force]
  onerec stages
  onerec data download NAME [--dest DIR] [--url URL] [--sha256 HEX] [--force]
"""
from __future__ import annotations

import argparse
import sys


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="preset YAML merged over the built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (dotted key, YAML value); repeatable")
    p.add_argument("--force", action="store_true", help="recompute even if the outputs are up to date")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onerec", description="OneRec daily pipeline stages")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one stage for one date")
    run.add_argument("stage")
    run.add_argument("--date", required=True, help="partition date YYYY-MM-DD")
    _config_args(run)

    pipe = sub.add_parser("pipeline", help="run the whole pipeline locally")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", required=True)
    prun = pipe_sub.add_parser("run", help="run every stage for each date in [start, end]")
    prun.add_argument("--start", required=True)
    prun.add_argument("--end", help="last date (default: start)")
    prun.add_argument("--until", metavar="STAGE", help="stop after this stage (default: run every stage)")
    _config_args(prun)

    sub.add_parser("stages", help="list the registered stages")

    sub.add_parser("serve", help="the recommendation service (FastAPI); `onerec serve --help` lists its options",
                   add_help=False)

    data = sub.add_parser("data", help="public datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch, verify and unpack an official public release")
    dl.add_argument("name")
    dl.add_argument("--dest", help="target folder (default $ONEREC_HOME/data/NAME)")
    dl.add_argument("--url", help="override the catalog URL (mirror)")
    dl.add_argument("--sha256", help="expected SHA-256 of the download")
    dl.add_argument("--force", action="store_true")
    return parser


def _serve(argv: list[str]) -> int:
    """`onerec serve ...` = `python -m onerec.serving ...`, with the pipeline's MLflow store by default."""
    from onerec.config import DEFAULTS, resolved
    from onerec.serving import main as serve

    if not any(a.startswith(("--tracking-uri", "--bundle")) for a in argv):
        argv = ["--tracking-uri", resolved(DEFAULTS)["mlflow"]["tracking_uri"], *argv]
    serve(argv)
    return 0


def _dispatch(args) -> int:
    if args.command == "stages":
        from components.registry import STAGES

        for s in STAGES:
            print(f"{s.name:16s} after {','.join(s.upstream) or '-':24s} {s.description}")
        return 0
    if args.command == "data":
        from pathlib import Path

        from onerec.config import home
        from onerec.data.download import download

        dest = Path(args.dest) if args.dest else home() / "data" / args.name
        path = download(args.name, dest, url=args.url, sha256=args.sha256, force=args.force)
        print(f"{args.name}: {path}")
        return 0

    from onerec.config import load_config

    config = load_config(args.config, args.overrides)
    if args.command == "run":
        from components.contract import run_stage

        result = run_stage(args.stage, args.date, config, force=args.force)
        what = "up to date, nothing to do" if result.status == "skipped" else f"done in {result.manifest['duration_s']}s"
        print(f"{result.stage} {result.date}: {what}")
        return 0
    if args.command == "pipeline":
        from components.runner import run_pipeline

        return run_pipeline(config, args.start, args.end or args.start, force=args.force, until=args.until)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:          # the service parses its own options
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # map the contract's error types to exit codes, one clear line each
        from onerec.errors import OneRecError

        code = getattr(e, "exit_code", None) if isinstance(e, OneRecError) else None
        if code is None and type(e).__name__ == "DownloadError":
            code = 2
        if code is None and isinstance(e, FileNotFoundError):
            code = 2
        if code is None:
            raise  # unexpected: keep the traceback, exit 1 (retryable)
        print(f"error: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
