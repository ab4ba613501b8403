"""The shipped configs (``default``: the README's main job, ``tiny``: test size), found by name
as package resources, so they resolve the same from a checkout, an installed wheel or a Ray job's
working directory.

    from pipelines.configs import load_config
    cfg = load_config("tiny", ["train.max_steps=20"])     # a shipped name or a path to a YAML file
"""
from __future__ import annotations

from importlib.resources import files

from ssl_core.config import Config
from ssl_core.config import load_config as _load


def directory():
    """The directory of the shipped YAML files (a traversable)."""
    return files(__name__)


def names() -> list[str]:
    return sorted(p.name[:-5] for p in directory().iterdir() if p.name.endswith(".yaml"))


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """A shipped config by name, or a YAML file by path, with ``section.key=value`` overrides."""
    return _load(name_or_path, overrides, search=[directory()])
