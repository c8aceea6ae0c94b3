"""Every MLflow call of the project lives here.

Runs use `sqlite:///mlflow.db` by default; `MLFLOW_TRACKING_URI` in the environment wins
over params.yaml so tests and CI can point anywhere.

Every top-level run is comparable with any other: it carries the git commit (and whether
tracked code differed from it), the pipeline execution it belongs to (tag
`siit.pipeline_run`, shared by the stage runs of one `dvc repro`), and the DVC hashes of the
data and token maps it read, also as MLflow dataset inputs (the runs table's Dataset
column). The experiment is marked as model training (`mlflow.experimentKind`); MLflow
3.17's UI decides by its own GenAI / Model training switch, which `ui_link` sets, so the
link opens the runs table rather than the GenAI traces overview.

A killed stage cannot end its runs: every run carries the pid and host of the process that
runs it (`siit.pid`, `siit.host`), and a stage that starts marks KILLED the RUNNING runs
whose process is gone from this host. A new sqlite store gets its schema in a temporary
file that takes the store's name only once complete, so a kill during MLflow's migrations
leaves no half-created mlflow.db.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import TrackingConfig
from components.io import process_alive

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 UI: runs table, not GenAI traces
PIPELINE_TAG = "siit.pipeline_run"
PIPELINE_ENV = "SIIT_PIPELINE_RUN"
PID_TAG, HOST_TAG, STARTED_TAG = "siit.pid", "siit.host", "siit.process_start"
KILLED_TAG = "siit.killed"
CHAMPION = "champion"
GATE_METRIC = "valid_ndcg_at_10"
# pipeline outputs that change during a run: they do not make the code "dirty"
_NOT_CODE = (":(exclude)dvc.lock", ":(exclude)reports", ":(exclude)params.yaml")


def tracking_uri(cfg: TrackingConfig) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"train.epochs": 4, ...} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _mlflow(cfg: TrackingConfig):
    import mlflow

    uri = tracking_uri(cfg)
    _create_sqlite_store(uri)
    # mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where
    # tracking_uri() would later read it as the user's choice and send every later config of
    # this process (a served deployment, a test session) to the first store: keep the
    # environment as the user left it (the URI lives in mlflow's own global)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def _sqlite_path(uri: str) -> Path | None:
    """The file of a local `sqlite:///` store (None for other stores and in-memory sqlite)."""
    from urllib.parse import unquote

    if not uri.startswith("sqlite:///"):
        return None
    name = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    return Path(name) if name and name != ":memory:" else None


def _create_sqlite_store(uri: str) -> None:
    """A missing sqlite store is created whole: MLflow's schema and migrations run on a
    temporary sibling, which is then hard-linked to the store's name (never replacing a store
    another process created meanwhile). A kill during creation leaves only a dot-named
    temporary, removed by the next creation (components.io)."""
    path = _sqlite_path(uri)
    if path is None or path.exists():
        return
    import tempfile

    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine_with_retry

    from components.io import remove_stale_siblings

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(path)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        with contextlib.suppress(FileExistsError):  # another process's is complete too
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux): tells a pid reused by
    another process from the one that tagged a run."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    """Who runs a run: this process and host (what finds the runs of a killed process)."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: os.uname().nodename}
    started = _process_start(os.getpid())
    if started:
        tags[STARTED_TAG] = started
    return tags


def _owner_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that tagged a run no longer runs (on this host; other hosts' runs
    cannot be checked from here and are never touched)."""
    if tags.get(HOST_TAG) != os.uname().nodename or not tags.get(PID_TAG, "").isdigit():
        return False
    pid = int(tags[PID_TAG])
    if not process_alive(pid):
        return True
    started = tags.get(STARTED_TAG)
    return started is not None and _process_start(pid) not in (None, started)


def end_runs_of_killed_processes(cfg: TrackingConfig, keep: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this experiment whose process is gone from this host
    (a stage killed by SIGKILL or the OOM killer cannot end them), with tag `siit.killed`
    saying why; `keep` is a run about to be resumed. Returns the run ids ended."""
    mlflow = _mlflow(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return []
    client = mlflow.MlflowClient()
    running = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'RUNNING'",
        max_results=1000,
    )
    ended = []
    for run in running:
        tags = run.data.tags
        if run.info.run_id == keep or not _owner_gone(tags):
            continue
        why = (
            f"process {tags[PID_TAG]} on {tags[HOST_TAG]} ended without ending this run "
            f"(killed); found by process {os.getpid()}"
        )
        client.set_tag(run.info.run_id, KILLED_TAG, why)
        client.set_terminated(run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    return ended


def set_experiment(cfg: TrackingConfig, attempts: int = 5):
    """The project's experiment, created if needed and marked as model training.

    Processes starting together on a new store (the `train` stage's two models) may both
    create the experiment or its tag; the one that loses the race (a unique-constraint error)
    finds the other's on its next attempt."""
    mlflow = _mlflow(cfg)
    from mlflow.exceptions import MlflowException

    def ensure():
        experiment = mlflow.set_experiment(cfg.experiment)
        if (experiment.tags or {}).get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            mlflow.MlflowClient().set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return experiment

    for attempt in range(attempts - 1):
        try:
            return ensure()
        except MlflowException as err:
            if not ("UNIQUE constraint" in str(err) or err.error_code == "RESOURCE_ALREADY_EXISTS"):
                raise
            time.sleep(0.1 * (attempt + 1))
    return ensure()


def ui_link(cfg: TrackingConfig, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs table in the MLflow UI (`mlflow ui` at `base`).

    MLflow 3.17 opens an experiment on the page of its sidebar switch (GenAI / Model
    training, kept in the browser), not on the experiment's `mlflow.experimentKind` tag
    that earlier 3.x releases read; `workflowType=machine_learning` in the link selects
    Model training, whose landing page is the runs table.
    """
    experiment = _mlflow(cfg).get_experiment_by_name(cfg.experiment)
    where = f"/{experiment.experiment_id}" if experiment is not None else ""
    return f"{base.rstrip('/')}/#/experiments{where}?workflowType=machine_learning"


@contextmanager
def start_run(
    cfg: TrackingConfig,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    nested: bool = False,
    run_id: str | None = None,
    dvc_stage: str | None = None,
    log_outputs: bool = True,
) -> Iterator[Any]:
    """An MLflow run (nested under the active one when `nested`; `run_id` resumes one).

    A new top-level run is tagged with its git commit, dirty flag and pipeline execution, and
    logs the data and token maps of its DVC stage (`dvc_stage`, by default `tags["stage"]`,
    read from dvc.yaml) as dataset inputs: those it reads when it starts, the token maps it
    wrote when it ends (unless `log_outputs` is false: a stage's other process wrote them).
    """
    mlflow = _mlflow(cfg)
    if not nested:
        set_experiment(cfg)
        end_runs_of_killed_processes(cfg, keep=run_id)
    stage = dvc_stage or (tags or {}).get("stage")
    if run_id:
        kwargs: dict[str, Any] = {"run_id": run_id}
    else:
        extra = run_context_tags() if not nested else {}
        kwargs = {"run_name": run_name, "tags": {**extra, **process_tags(), **dict(tags or {})}}
    with mlflow.start_run(nested=nested, **kwargs) as run:
        if run_id:
            mlflow.set_tags(process_tags())  # resumed: this process runs it now
        fresh = not nested and not run_id and stage
        if fresh:
            _log_lineage(stage_inputs(stage), "training" if "train" in stage else "input")
        yield run
        if not nested and stage and log_outputs:
            _log_lineage(stage_outputs_used(stage), "training" if "train" in stage else "output")


# ---------------------------------------------------------------------------------------
# what makes runs comparable: code version, pipeline execution, data and token-map hashes


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Commit of HEAD and whether tracked code differs from it (pipeline outputs aside)."""
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if not commit:
        return {}
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE, cwd=cwd)
    files = [line[3:] for line in (changed or "").splitlines() if line.strip()]
    out = {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": str(bool(files)).lower(),
    }
    if files:
        out["git.dirty_files"] = ", ".join(files[:20])[:4000]
    return out


def _ancestor_dvc() -> str | None:
    """An id of the `dvc repro` / `dvc exp run` process this stage runs under (Linux /proc)."""
    pid = os.getppid()
    for _ in range(12):
        if pid <= 1:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        names = [Path(a.decode(errors="replace")).name for a in argv[:3]]
        if "dvc" in names and any(a in (b"repro", b"exp") for a in argv):
            fields = stat.rsplit(")", 1)[1].split()
            return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{os.uname().nodename}:{pid}:{fields[19]}"))
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None


def pipeline_run_id() -> str | None:
    """The pipeline execution this process belongs to: $SIIT_PIPELINE_RUN (set by `siit
    deploy`'s flow), else the enclosing dvc process; None for a stage run on its own."""
    return os.environ.get(PIPELINE_ENV) or _ancestor_dvc()


def run_context_tags(cwd: Path | None = None) -> dict[str, str]:
    tags = git_state(cwd)
    pipeline = pipeline_run_id()
    if pipeline:
        tags[PIPELINE_TAG] = pipeline
    return tags


def dvc_md5(path: str | Path) -> str:
    """The hash DVC 3 records in dvc.lock: md5 of a file; for a directory, md5 of its sorted
    (relpath, md5) listing with the `.dir` suffix."""
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    entries = [
        {"md5": _file_md5(f), "relpath": f.relative_to(path).as_posix()}
        for f in sorted(path.rglob("*"), key=lambda f: f.relative_to(path).parts)
        if f.is_file()
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dvc_stage(stage: str, root: Path) -> dict:
    import yaml

    path = root / "dvc.yaml"
    if not path.exists():
        return {}
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    return stages.get(stage) or {}


def _names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def _is_data(path: str) -> bool:
    return not (path.endswith(".py") or path.startswith(("components", "flows")))


def stage_inputs(stage: str, root: Path | None = None) -> dict[str, Path]:
    """Data a DVC stage reads (its deps that are not code): name -> path."""
    root = root or Path.cwd()
    return {d: root / d for d in _names(_dvc_stage(stage, root).get("deps")) if _is_data(d)}


def stage_outputs_used(stage: str, root: Path | None = None) -> dict[str, Path]:
    """Token maps a stage writes and trains with (SIIT's refined maps), one per file."""
    root = root or Path.cwd()
    out: dict[str, Path] = {}
    for name in _names(_dvc_stage(stage, root).get("outs")):
        path = root / name
        if "token_map" not in name or not path.exists():
            continue
        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        out.update({f.relative_to(root).as_posix(): f for f in files})
    return out


def _log_lineage(inputs: Mapping[str, Path], context: str) -> None:
    """Lineage is worth a warning, never a failed stage."""
    try:
        _log_lineage_or_raise(inputs, context)
    except Exception as exc:  # noqa: BLE001 - tracking extras must not stop training
        warnings.warn(f"could not log data lineage to MLflow: {exc}", stacklevel=2)


def _log_lineage_or_raise(inputs: Mapping[str, Path], context: str) -> None:
    """DVC hashes as tags and as MLflow dataset inputs (the runs table's Dataset column)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    order = sorted(inputs, key=lambda n: (not n.startswith("data/"), "token_map" not in n, n))
    present = {name: inputs[name] for name in order if inputs[name].exists()}  # data first
    if not present:
        return
    datasets, tags = [], {}
    for name, path in present.items():
        digest = dvc_md5(path)
        tags[f"dvc.md5.{name}"] = digest
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(str(path.resolve()))
        datasets.append(MetaDataset(source=source, name=name, digest=digest))
    mlflow.set_tags(tags)
    mlflow.log_inputs(
        datasets=datasets, contexts=[context] * len(datasets), tags_list=[None] * len(datasets)
    )


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    flat = flatten(params)
    # MLflow caps a param value at 6000 chars and a batch at 100 params
    items = [(k, str(v)[:6000]) for k, v in flat.items()]
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    import mlflow

    clean = {f"{prefix}{k.replace('@', '_at_')}": float(v) for k, v in metrics.items()}
    mlflow.log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


# ---------------------------------------------------------------------------------------
# the served model: logging, registry, champion gate


def pip_requirements() -> list[str]:
    """This project's dependencies pinned to the installed versions (no inference run)."""
    import re
    from importlib import metadata

    try:
        requires = metadata.requires("siit") or []
    except metadata.PackageNotFoundError:
        requires = ["torch", "transformers", "tokenizers", "numpy", "pandas", "polars", "pyarrow"]
    out = []
    for req in requires:
        if "extra ==" in req:
            continue
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]
        try:
            version = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
        out.append(f"{name}=={version}")
    return out


def find_run(cfg: TrackingConfig, stage: str, metric: str, value: float) -> str | None:
    """The latest finished run of `stage` whose `metric` is `value` (the run that made a
    DVC output: its report holds the same figure)."""
    mlflow = _mlflow(cfg)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        logged = run.data.metrics.get(metric)
        if logged is not None and abs(logged - value) <= 1e-9 * max(1.0, abs(value)):
            return run.info.run_id
    return None


def log_recommender(
    cfg: TrackingConfig,
    bundle: Path,
    *,
    run_id: str | None,
    name: str = "recommender",
    registered_model: str | None = None,
    input_example: Any = None,
    metrics: Mapping[str, float] | None = None,
) -> tuple[str, str, str | None]:
    """Log a serving bundle (model/, token_map.parquet, serving.json) as a pyfunc model into
    `run_id` (resumed; a new run when None), optionally registered.

    Returns (run id, model URI, registered version or None).
    """
    import pandas as pd

    import components
    from components.paths import MODEL_DIR, TOKEN_MAP_FILE
    from components.serving import SERVING_CONFIG, SiitPyfunc

    mlflow = _mlflow(cfg)
    set_experiment(cfg)
    artifacts = {
        "model": str(bundle / MODEL_DIR),
        "token_map": str(bundle / TOKEN_MAP_FILE),
        "serving_config": str(bundle / SERVING_CONFIG),
    }
    # what a later champion start needs: the fitted initial tokenizer and compatibility record
    for key, file in (("item_encoder", "item_encoder"), ("warm_start", "warm_start.json")):
        if (bundle / file).exists():
            artifacts[key] = str(bundle / file)
    example = input_example if input_example is not None else pd.DataFrame({"history": [["1"]]})
    signature = _recommender_signature()
    import shutil
    import tempfile

    kwargs: dict[str, Any] = {"run_id": run_id}
    if not run_id:
        kwargs = {"run_name": "serving-model", "tags": process_tags()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(**kwargs) as run,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if run_id:
            mlflow.set_tags(process_tags())  # resumed: this process runs it now
        package = Path(tmp) / "components"  # the code the model needs, without caches
        shutil.copytree(
            Path(components.__file__).parent,
            package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=SiitPyfunc(),
            artifacts=artifacts,
            code_paths=[str(package)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model,
            await_registration_for=60,
        )
        if metrics:
            mlflow.log_metrics(dict(metrics), model_id=info.model_id)
    version = str(info.registered_model_version) if registered_model else None
    return run.info.run_id, info.model_uri, version


def _recommender_signature():
    """history (a list of item ids), optional k and user_id -> item_ids, scores, k, unknown ids."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec(AnyType(), "history"),  # item ids: strings or integers (checked in serving)
            ColSpec("long", "k", required=False),
            ColSpec("string", "user_id", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec(Array("string"), "item_ids"),
            ColSpec(Array("double"), "scores"),
            ColSpec("long", "k"),
            ColSpec(Array("string"), "unknown_item_ids"),
        ]
    )
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", "long", None)]))


@dataclass
class GateDecision:
    """Whether a new version becomes champion, and the figures it was decided on."""

    promoted: bool
    reason: str
    challenger: float
    champion: float | None = None
    champion_version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def decide(challenger: float, champion: float | None) -> tuple[bool, str]:
    """The gate: a strictly better validation NDCG@10 (or no champion yet) promotes."""
    if champion is None:
        return True, "no champion yet"
    if challenger > champion:
        return True, f"beats the champion ({challenger:.6f} > {champion:.6f})"
    return False, f"does not beat the champion ({challenger:.6f} <= {champion:.6f})"


def gate_champion(
    cfg: TrackingConfig,
    version: str,
    *,
    score: float,
    fingerprint: str,
    rescore: Callable[[str], float] | None = None,
) -> GateDecision:
    """Move alias `champion` to `version` only if it beats the current champion on validation
    NDCG@10 on the same data.

    Same dataset fingerprint: the figures recorded on the two versions are compared. Other
    data: `rescore(model_uri)` computes both figures again on the current data (when given;
    without it the champion stays). The decision and both figures become version tags.
    """
    from mlflow.exceptions import MlflowException

    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    name = cfg.registered_model
    client.set_model_version_tag(name, version, "dataset_fingerprint", fingerprint)
    client.set_model_version_tag(name, version, GATE_METRIC, repr(float(score)))
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is not None and str(current.version) == str(version):
        current = None
    champion_score, compared_on, challenger = None, fingerprint, float(score)
    if current is not None:
        if current.tags.get("dataset_fingerprint") == fingerprint and GATE_METRIC in current.tags:
            champion_score = float(current.tags[GATE_METRIC])
        elif rescore is not None:
            champion_score = rescore(f"models:/{name}/{current.version}")
            challenger = rescore(f"models:/{name}/{version}")
            compared_on = f"{fingerprint} (both re-scored: the champion was trained on other data)"
        else:
            champion_score = float("inf")  # not comparable: keep the champion
    promoted, reason = decide(challenger, champion_score)
    decision = GateDecision(
        promoted=promoted,
        reason=reason,
        challenger=challenger,
        champion=champion_score,
        champion_version=str(current.version) if current is not None else None,
    )
    decision.tags = {
        "champion.decision": "promoted" if promoted else "rejected",
        "champion.reason": reason,
        "champion.challenger_valid_ndcg_at_10": repr(challenger),
        "champion.incumbent_valid_ndcg_at_10": ""
        if champion_score is None
        else repr(champion_score),
        "champion.incumbent_version": decision.champion_version or "",
        "champion.compared_on": compared_on,
    }
    for key, value in decision.tags.items():
        client.set_model_version_tag(name, version, key, value)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return decision


def champion_version(cfg: TrackingConfig) -> str | None:
    from mlflow.exceptions import MlflowException

    client = _mlflow(cfg).MlflowClient()
    try:
        return str(client.get_model_version_by_alias(cfg.registered_model, CHAMPION).version)
    except MlflowException:
        return None


def download_champion(cfg: TrackingConfig, dest: Path) -> tuple[Path, str] | None:
    """The champion's model folder (model/, token_map.parquet, item_encoder/, warm_start.json)
    downloaded into `dest` (replaced), and its version; None when no champion is registered."""
    import shutil

    version = champion_version(cfg)
    if version is None:
        return None
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    local = _mlflow(cfg).artifacts.download_artifacts(
        artifact_uri=f"models:/{cfg.registered_model}/{version}", dst_path=str(dest)
    )
    return Path(local) / "artifacts", version


def load_pyfunc(cfg: TrackingConfig, model_uri: str):
    return _mlflow(cfg).pyfunc.load_model(model_uri)


def log_artifact_to_run(
    cfg: TrackingConfig, run_id: str, path: str | Path, artifact_path: str | None = None
) -> None:
    """Attach a file to a finished run (its status and times are left alone)."""
    _mlflow(cfg).MlflowClient().log_artifact(run_id, str(path), artifact_path)


def set_tags(tags: Mapping[str, str]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


# ---------------------------------------------------------------------------------------
# comparing runs


def run_summary(cfg: TrackingConfig, run_ref: str) -> dict[str, Any]:
    """A run by id (or by a unique run name in the experiment): its params, metrics, tags."""
    from mlflow.exceptions import MlflowException

    client = _mlflow(cfg).MlflowClient()
    try:
        run = client.get_run(run_ref)
    except MlflowException:
        experiment = client.get_experiment_by_name(cfg.experiment)
        runs = (
            client.search_runs(
                [experiment.experiment_id],
                filter_string=f"attributes.run_name = '{run_ref}'",
                order_by=["attributes.start_time DESC"],
                max_results=2,
            )
            if experiment
            else []
        )
        if not runs:
            raise LookupError(
                f"no run with id or name {run_ref!r} in {tracking_uri(cfg)}"
            ) from None
        run = runs[0]
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    }
