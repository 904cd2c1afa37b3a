"""The `onerec` command line. Kept import-light: heavy modules load inside the command that needs them.

  onerec run <stage> --date D [--config F] [--set k=v ...] [--force]
  onerec pipeline run --start D1 --end D2 [--until STAGE] [--config F] [--set k=v ...] [--force]
  onerec stages
  onerec lineage <model> <version|alias> [--json]
  onerec data download NAME [--dest DIR] [--url URL] [--sha256 HEX] [--force]
  onerec model rollback [--name onerec] [--reason TEXT] [--tracking-uri URI]
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
    # for orchestrators (Kubeflow container components): outputs as files, params as one JSON value
    run.add_argument("--set-json", metavar="JSON", help="a JSON list of key=value overrides (after --set)")
    run.add_argument("--digest-file", metavar="PATH", help="write the stage's output digest here")
    run.add_argument("--gate-file", metavar="PATH",
                     help="write 'pass', or 'blocked' when the stage's metrics say blessed=false")
    run.add_argument("--upstream-digests", metavar="S=D,...",
                     help="digests the orchestrator passed on: exit 2 unless the store still holds them")
    run.add_argument("--run-id", metavar="ID", help="the orchestrator's run id, tagged on the MLflow run")

    pipe = sub.add_parser("pipeline", help="run the whole pipeline locally")
    pipe_sub = pipe.add_subparsers(dest="pipeline_command", required=True)
    prun = pipe_sub.add_parser("run", help="run every stage for each date in [start, end]")
    prun.add_argument("--start", required=True)
    prun.add_argument("--end", help="last date (default: start)")
    prun.add_argument("--until", metavar="STAGE", help="stop after this stage (default: run every stage)")
    _config_args(prun)

    sub.add_parser("stages", help="list the registered stages")

    lin = sub.add_parser("lineage", help="model version -> training run -> datasets -> tokenizer -> DAG run")
    lin.add_argument("model", help="registered model name")
    lin.add_argument("version", help="version number or alias (champion, challenger, previous)")
    lin.add_argument("--tracking-uri", help="MLflow tracking URI (default: the pipeline's)")
    lin.add_argument("--store", help="artifact store root for full digests of older runs (default: the pipeline's)")
    lin.add_argument("--json", action="store_true", help="print JSON instead of text")

    sub.add_parser("serve", help="the recommendation service (FastAPI); `onerec serve --help` lists its options",
                   add_help=False)

    model = sub.add_parser("model", help="the model registry's aliases")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    rb = model_sub.add_parser("rollback", help="move champion back to previous (recorded as version tags)")
    rb.add_argument("--name", help="registered model name (default: the registry policy's)")
    rb.add_argument("--reason", default="manual rollback", help="why: recorded on the versions")
    rb.add_argument("--tracking-uri", help="MLflow tracking URI (default: the pipeline's)")

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


def _stage_dir(stage: str, date: str, config: dict):
    from onerec.config import resolved
    from onerec.store import StageDir, open_store

    cfg = resolved(config)
    return StageDir(open_store(cfg["store"]["root"]), cfg["pipeline"], date, stage)


def _check_upstream(stage: str, date: str, config: dict, spec: str) -> None:
    """A cached orchestrator run hands on the digests it saw; recomputed upstream outputs must not mix in."""
    from onerec.errors import BadInput

    for item in filter(None, spec.split(",")):
        name, _, digest = item.partition("=")
        actual = _stage_dir(name, date, config).digest()
        if digest and actual != digest:
            raise BadInput(f"{stage} {date}: upstream {name} changed since the orchestrator saw it "
                           f"({digest[:12]} -> {actual[:12]}); rerun {name} downstream")


def _write_outputs(args, config: dict, result) -> None:
    from pathlib import Path

    if args.digest_file:
        Path(args.digest_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.digest_file).write_text(_stage_dir(result.stage, result.date, config).digest())
    if args.gate_file:
        blessed = (result.manifest.get("metrics") or {}).get("blessed", True)
        Path(args.gate_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.gate_file).write_text("pass" if blessed not in (False, 0, "false", "False") else "blocked")


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

    if args.command == "model":
        from onerec import model_registry
        from onerec.config import DEFAULTS, resolved

        uri = args.tracking_uri or resolved(DEFAULTS)["mlflow"]["tracking_uri"]
        name = args.name or model_registry.DEFAULT_NAME
        before = model_registry.resolve_alias(name, model_registry.CHAMPION, uri)
        version = model_registry.rollback(name, tracking_uri=uri, why=args.reason)
        print(f"{name}: {model_registry.CHAMPION} {'-' if before is None else before.version} -> {version}")
        return 0

    if args.command == "lineage":
        import json

        from onerec import lineage
        from onerec.config import DEFAULTS, resolved

        cfg = resolved(DEFAULTS)
        chain = lineage.lineage(args.model, args.version, tracking_uri=args.tracking_uri or cfg["mlflow"]["tracking_uri"],
                                store_root=args.store or cfg["store"]["root"])
        print(json.dumps(chain, indent=2, sort_keys=True) if args.json else lineage.format_lineage(chain))
        return 0

    from onerec.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "set_json", None):
        import json

        try:
            extra = json.loads(args.set_json)
        except ValueError:
            extra = None
        if not isinstance(extra, list):
            from onerec.errors import BadInput

            raise BadInput(f"--set-json expects a JSON list of key=value strings, got {args.set_json!r}")
        overrides += [str(x) for x in extra]
    config = load_config(args.config or None, overrides)
    if args.command == "run":
        import os

        from components.contract import run_stage

        if args.run_id:
            os.environ["ONEREC_RUN_ID"] = args.run_id
        if args.upstream_digests:
            _check_upstream(args.stage, args.date, config, args.upstream_digests)
        result = run_stage(args.stage, args.date, config, force=args.force)
        what = "up to date, nothing to do" if result.status == "skipped" else f"done in {result.manifest['duration_s']}s"
        print(f"{result.stage} {result.date}: {what}")
        _write_outputs(args, config, result)
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
