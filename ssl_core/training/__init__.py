"""Training, framework-free: the loop and its parts (see ``loop.py``), the local session and reader.
No Ray and no MLflow here: ``pipelines.train`` adds the Ray Train session and MLflow logging."""
from ssl_core.training.job import TrainJob, Tracking
from ssl_core.training.local import local_batches, run_local
from ssl_core.training.loop import NO_BATCH, train_loop
from ssl_core.training.schedule import lr_factor
from ssl_core.training.session import LocalSession, Session
from ssl_core.training.state import Progress, TrainState, build_state
from ssl_core.training.step import next_window, train_step

__all__ = ["TrainJob", "Tracking", "local_batches", "run_local", "NO_BATCH", "train_loop",
           "lr_factor", "LocalSession", "Session", "Progress", "TrainState", "build_state",
           "next_window", "train_step"]
