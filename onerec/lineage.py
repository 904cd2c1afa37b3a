"""Lineage from the MLflow registry down to the data: model version -> training run -> the runs and digests of
every stage it consumed (datasets) -> tokenizer version -> orchestrator (DAG) run and date.

Everything is read from MLflow (the tags of onerec/tracking.py and mlflow/registry_policy.yaml), so a data
scientist needs the tracking server only, not the artifact store:
  - the version's `run_id` (or its onerec.pipeline/date/stage tags) names the training run;
  - a stage run's `onerec.input.<stage>` tags hold the first 16 hex of each upstream output digest, and the
    upstream run that committed exactly those outputs carries them in `onerec.output_digest`;
  - `onerec.input.external:<name>` tags are inputs from outside the date (source files, yesterday's model);
  - the tokenize run in the chain carries `onerec.codebook_digest` (the tokenizer version);
  - `onerec.orchestrator_run` is the Airflow DAG run / Kubeflow job; the parent run groups the date.
"""
from __future__ import annotations

from onerec import tracking
from onerec.config import DEFAULTS
from onerec.errors import BadInput

INPUT = "onerec.input."


def _version(client, name: str, ref: str):
    from mlflow.exceptions import MlflowException

    try:
        if str(ref).isdigit():
            return client.get_model_version(name, str(ref))
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as e:
        raise BadInput(f"no model version {name}/{ref}: {e.message.splitlines()[0]}") from None


def _stage_runs(client, exp_id: str, run_key: str, stage: str) -> list:
    flt = f"tags.`{tracking.TAG_RUN_KEY}` = '{run_key}' and tags.`{tracking.TAG_STAGE}` = '{stage}'"
    return client.search_runs([exp_id], filter_string=flt, order_by=["attributes.start_time DESC"], max_results=100)


class _Store:
    """Optional: the artifact store's manifests give full digests for runs older than the output-digest tag."""

    def __init__(self, root: str | None):
        self.store = None
        if root:
            from onerec.store import open_store

            try:
                self.store = open_store(root)
            except Exception:  # noqa: BLE001 - lineage from MLflow alone still works
                self.store = None

    def committed(self, tags: dict) -> tuple[str | None, str | None]:
        """(mlflow run id, output digest) of the finished stage directory the run's tags name."""
        if self.store is None:
            return None, None
        from onerec.store import StageDir

        try:
            d = StageDir(self.store, tags[tracking.TAG_PIPELINE], tags[tracking.TAG_DATE], tags[tracking.TAG_STAGE])
            if d.is_done():
                return d.manifest().get("mlflow_run_id"), d.digest()
        except Exception:  # noqa: BLE001
            pass
        return None, None


def _output_digest(run, store: _Store) -> str | None:
    if digest := run.data.tags.get(tracking.TAG_OUTPUT_DIGEST):
        return digest
    run_id, digest = store.committed(run.data.tags)
    return digest if run_id == run.info.run_id else None


def _upstream_run(client, exp_id: str, run_key: str, stage: str, digest16: str, store: _Store):
    """The run that committed the outputs with this digest; else the newest finished run of the stage."""
    runs = _stage_runs(client, exp_id, run_key, stage)
    exact = [r for r in runs if (_output_digest(r, store) or "").startswith(digest16)] if digest16 else []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return (exact or finished or [None])[0], bool(exact)


def _node(client, run, seen: dict, store: _Store) -> dict:
    tags = run.data.tags
    node = {"stage": tags.get(tracking.TAG_STAGE), "pipeline": tags.get(tracking.TAG_PIPELINE),
            "date": tags.get(tracking.TAG_DATE), "run_id": run.info.run_id, "status": run.info.status,
            "output_digest": _output_digest(run, store), "code_version": tags.get(tracking.TAG_CODE),
            "config_hash": tags.get("onerec.config_hash"), "inputs": [], "external": {}}
    if codebook := tags.get("onerec.codebook_digest"):
        node["codebook_digest"] = codebook
    if run.info.run_id in seen:  # a diamond (features and tokenize both read ingest): walk it once
        return {**node, "inputs": [], "repeat": True}
    seen[run.info.run_id] = node
    for key in sorted(tags):
        if not key.startswith(INPUT):
            continue
        name, digest = key[len(INPUT):], tags[key]
        if name.startswith("external:"):
            node["external"][name[len("external:"):]] = digest
            continue
        up, exact = _upstream_run(client, run.info.experiment_id, tags[tracking.TAG_RUN_KEY], name, digest, store)
        child = _node(client, up, seen, store) if up is not None else {"stage": name, "run_id": None, "inputs": [],
                                                                 "external": {}}
        node["inputs"].append({**child, "input_digest": digest, "digest_matches": exact})
    return node


def _walk(node: dict):
    yield node
    for child in node["inputs"]:
        yield from _walk(child)


def lineage(name: str, ref: str, tracking_uri: str | None = None, store_root: str | None = None) -> dict:
    """The lineage chain of model version `ref` (a number or an alias) of registered model `name`.
    `store_root` (optional) lets runs that predate the onerec.output_digest tag be matched by their manifests."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    store = _Store(store_root)
    mv = _version(client, name, ref)
    run = client.get_run(mv.run_id) if mv.run_id else None
    if run is None or tracking.TAG_STAGE not in run.data.tags:
        # registered from a run outside the pipeline: fall back to the policy's version tags
        t = mv.tags or {}
        if not {"onerec.pipeline", "onerec.date", "onerec.stage"} <= set(t):
            raise BadInput(f"{name}/{mv.version} has no training run: neither run_id nor onerec.* version tags")
        exp_id = (run.info.experiment_id if run else
                  client.get_experiment_by_name(DEFAULTS["mlflow"]["experiment"]).experiment_id)
        run, _ = _upstream_run(client, exp_id, f"{t['onerec.pipeline']}/{t['onerec.date']}", t["onerec.stage"],
                               t.get("onerec.output_digest", "")[:16], store)
        if run is None:
            raise BadInput(f"{name}/{mv.version}: no MLflow run of {t['onerec.stage']} on {t['onerec.date']}")
    training = _node(client, run, {}, store)
    tags = run.data.tags
    tokenizer = next((n for n in _walk(training) if n.get("stage") == "tokenize"), None)
    parent_id = tags.get("mlflow.parentRunId")
    parent = client.get_run(parent_id) if parent_id else None
    return {
        "model": {"name": name, "version": str(mv.version), "aliases": sorted(getattr(mv, "aliases", []) or []),
                  "source": mv.source, "run_id": mv.run_id, "tags": dict(mv.tags or {}),
                  "created": mv.creation_timestamp},
        "training_run": training,
        "datasets": [{"stage": n["stage"], "date": n.get("date"), "output_digest": n.get("output_digest"),
                      "run_id": n["run_id"], "config_hash": n.get("config_hash"),
                      "external": n.get("external", {})}
                     for n in _walk(training) if n is not training and not n.get("repeat")],
        "tokenizer": None if tokenizer is None else {
            "stage": "tokenize", "date": tokenizer.get("date"), "run_id": tokenizer["run_id"],
            "codebook_digest": tokenizer.get("codebook_digest") or (mv.tags or {}).get("onerec.codebook_digest"),
            "output_digest": tokenizer.get("output_digest")},
        "dag_run": {"orchestrator_run": tags.get(tracking.TAG_ORCHESTRATOR_RUN),
                    "pipeline": tags.get(tracking.TAG_PIPELINE), "date": tags.get(tracking.TAG_DATE),
                    "mlflow_parent_run": parent_id, "mlflow_parent_name": parent.info.run_name if parent else None},
    }


def _short(d: str | None, n: int = 16) -> str:
    return (d or "-")[:n]


def format_lineage(chain: dict) -> str:
    m, t, dag = chain["model"], chain["training_run"], chain["dag_run"]
    lines = [f"model        {m['name']} version {m['version']}"
             + (f" (aliases: {', '.join(m['aliases'])})" if m["aliases"] else ""),
             f"  source     {m['source']}",
             f"training run {t['run_id']}  {t['stage']} {t['pipeline']}/{t['date']}  {t['status']}",
             f"  code {t.get('code_version') or '-'}  config {t.get('config_hash') or '-'}"
             f"  output {_short(t.get('output_digest'))}",
             "datasets"]

    def tree(node: dict, depth: int) -> None:
        for k, v in sorted(node.get("external", {}).items()):
            lines.append(f"{'  ' * depth}<- external {k}  {v}")
        for child in node["inputs"]:
            mark = "" if child.get("digest_matches", True) else "  (digest not matched: newest finished run)"
            again = "  (see above)" if child.get("repeat") else ""
            lines.append(f"{'  ' * depth}<- {child['stage']:<12s} {child.get('date') or '-'}  digest "
                         f"{_short(child.get('input_digest'))}  run {child.get('run_id') or '-'}{again}{mark}")
            if not child.get("repeat"):
                tree(child, depth + 1)

    tree(t, 1)
    tok = chain["tokenizer"]
    lines.append(f"tokenizer    codebook {_short(tok['codebook_digest'])}  tokenize {tok['date']}  run {tok['run_id']}"
                 if tok else "tokenizer    - (no tokenize stage in the chain)")
    lines.append(f"dag run      {dag['orchestrator_run'] or 'local runner (no orchestrator run)'}")
    lines.append(f"date         {dag['date']}  pipeline {dag['pipeline']}  "
                 f"MLflow parent run {dag['mlflow_parent_run'] or '-'} ({dag['mlflow_parent_name'] or '-'})")
    return "\n".join(lines)
