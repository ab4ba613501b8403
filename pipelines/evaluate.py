"""``sslpipe evaluate MODEL``: the evaluation suite on a local directory or an MLflow model.

MODEL is one of

* a local Hugging Face directory (what ``sslpipe pretrain`` exports);
* ``runs:/RUN_ID/PATH``: artifacts of an MLflow run;
* ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``: a version of the Model Registry.

MLflow URIs use ``MLFLOW_TRACKING_URI`` (else ``./mlflow.db``, as ``sslpipe pretrain``). The
artifacts are downloaded to a temporary directory: the registered pyfunc model
(``registry.log_model``) holds the exported directory as it is (``artifacts/model/``); models
logged otherwise (e.g. the ``transformers`` flavour: ``model/`` + ``components/tokenizer/``) are
reassembled into one loadable directory.

    sslpipe evaluate outputs/<run>/model --tasks stsb,sst2
    sslpipe evaluate models:/sslpipe-encoder@champion --json
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ssl_core.errors import UserError
from ssl_core.evaluation import EvaluationError, evaluate, format_table, parse_tasks
from ssl_core.export import SIDE_FILES
from ssl_core.tokenizer import TOKENIZER_FILES


class ModelRefError(UserError):
    """MODEL cannot be resolved to a model directory."""


MLFLOW_SCHEMES = ("runs:/", "models:/")
_USAGE = "give a directory, runs:/RUN_ID/PATH, models:/NAME/VERSION or models:/NAME@ALIAS"


def _shallowest(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name), key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return hits[0] if hits else None


def assemble(root: Path, out: Path) -> Path:
    """One loadable directory from downloaded MLflow artifacts (or ``root`` itself when it is one)."""
    if (root / "config.json").is_file() and (root / "tokenizer.json").is_file():
        return root
    tok = _shallowest(root, "tokenizer.json")
    if tok is not None and (tok.parent / "config.json").is_file():
        return tok.parent                                # an exported directory, kept whole
    cfg = _shallowest(root, "config.json")
    if cfg is None or tok is None:
        raise ModelRefError(f"no Hugging Face model (config.json + tokenizer.json) in the artifacts "
                            f"downloaded to {root}")
    out.mkdir(parents=True, exist_ok=True)
    for f in cfg.parent.iterdir():                       # weights + config (model/)
        if f.is_file():
            shutil.copy2(f, out / f.name)
    for name in TOKENIZER_FILES:                         # components/tokenizer/
        if (tok.parent / name).is_file():
            shutil.copy2(tok.parent / name, out / name)
    for rel in SIDE_FILES:                               # sslpipe/ side files, wherever they are
        src = next((p for p in sorted(root.rglob(Path(rel).name))
                    if p.as_posix().endswith(rel) and out not in p.parents), None)
        if src is not None and not (out / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
    return out


def _download(ref: str, dest: Path) -> Path:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.registry import TrackingError, check_tracking, tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ModelRefError(f"cannot resolve {ref}: no MLflow store at {uri} (set MLFLOW_TRACKING_URI "
                            "to the tracking server)")
    try:
        check_tracking(uri)
    except TrackingError as e:
        raise ModelRefError(str(e)) from None
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        if ref.startswith("models:/"):
            spec = ref[len("models:/"):].strip("/")
            if "@" in spec:
                name, alias = spec.rsplit("@", 1)
                client.get_model_version_by_alias(name, alias)
            elif "/" in spec:
                name, version = spec.rsplit("/", 1)
                if version.isdigit():
                    client.get_model_version(name, version)
            else:
                raise ModelRefError(f"'{ref}': {_USAGE}")
        else:
            run_id = ref[len("runs:/"):].split("/", 1)[0]
            if not run_id:
                raise ModelRefError(f"'{ref}': {_USAGE}")
            client.get_run(run_id)
        path = mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dest), tracking_uri=uri)
    except MlflowException as e:
        msg = str(e.message if hasattr(e, "message") else e).splitlines()[0]
        raise ModelRefError(f"cannot resolve {ref} at {uri}: {msg}") from None
    p = Path(path)
    if not p.exists() or (p.is_dir() and not any(p.iterdir())):
        raise ModelRefError(f"{ref} at {uri} holds no artifacts")
    return p


def resolve_model(ref: str, workdir: Path) -> Path:
    """A local model directory for MODEL (MLflow artifacts are downloaded under ``workdir``)."""
    if ref.startswith(MLFLOW_SCHEMES):
        root = _download(ref, workdir / "download")
        if root.is_file():
            raise ModelRefError(f"{ref} is a single file, not a model directory")
        return assemble(root, workdir / "model")
    if "://" in ref or ref.startswith(("runs:", "models:")):
        raise ModelRefError(f"model '{ref}': unsupported URI ({_USAGE})")
    p = Path(ref)
    if not p.is_dir():
        raise ModelRefError(f"model directory '{ref}' does not exist ({_USAGE})")
    return p


def run_evaluate(ref: str, tasks: str | None = None, corpus: str | None = None,
                 data_root: str | None = None, as_json: bool = False) -> str:
    """Resolve MODEL, run the suite, return what to print (the table, or JSON)."""
    names = parse_tasks(tasks)                            # a bad task name fails before any download
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="sslpipe-eval-") as tmp:
        model_dir = resolve_model(ref, Path(tmp))
        res = evaluate(model_dir, names, data_root=data_root, corpus=corpus,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    res["info"]["model"] = ref
    if as_json:
        return json.dumps(res, indent=2, default=str)
    if ref.startswith(MLFLOW_SCHEMES):
        res["info"]["model_dir"] = f"{ref} (downloaded)"
    return format_table(res)


__all__ = ["EvaluationError", "ModelRefError", "assemble", "resolve_model", "run_evaluate"]
