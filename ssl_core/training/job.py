"""What a training worker is handed: the typed description of one training run.

    job = TrainJob(cfg, tokenizer_dir="outputs/run/tokenizer", tracking=Tracking(uri, run_id))

It travels to Ray Train workers as ``train_loop_config={"job": job}`` (pickled by Ray) and is
passed as is to ``train_loop`` without Ray."""
from __future__ import annotations

from dataclasses import dataclass

from ssl_core.config import Config
from ssl_core.tokenizer import TokenizerFiles


@dataclass(frozen=True)
class Tracking:
    """Where rank 0 logs its metrics (an MLflow tracking URI and the run opened by the driver)."""
    uri: str
    run_id: str


@dataclass(frozen=True)
class TrainJob:
    cfg: Config
    tokenizer_dir: "str | TokenizerFiles"   # a local directory, or carried by value (Ray workers)
    tracking: Tracking | None = None
