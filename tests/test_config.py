import dataclasses
import re
from pathlib import Path

import pytest

import pipelines.cli  # noqa: F401  (registers the shipped configs directory)
from ssl_core.config import Config, ConfigError, config_reference, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_and_differ_from_defaults():
    d = load_config("default")
    t = load_config("tiny")
    assert d.data.corpus == "builtin:python-docs"
    assert t.train.max_steps < d.train.max_steps
    assert t.model.hidden_size < d.model.hidden_size


def test_overrides_are_typed():
    c = load_config("tiny", ["train.max_steps=7", "masking.ratio=0.3", "data.corpus=/x/y.txt",
                             "train.lr=1", "tokenizer.lowercase=false"])
    assert c.train.max_steps == 7 and c.masking.ratio == 0.3 and c.data.corpus == "/x/y.txt"
    assert isinstance(c.train.lr, float) and c.tokenizer.lowercase is False


@pytest.mark.parametrize("override,needle", [
    (["train.max_step=3"], "train.max_step"),
    (["nope.key=1"], "nope"),
    (["train.max_steps=abc"], "train.max_steps"),
    (["train.max_steps=1.5"], "train.max_steps"),
    (["tokenizer.lowercase=3"], "tokenizer.lowercase"),
    (["masking.ratio=1.5"], "masking.ratio"),
    (["train.max_steps"], "section.key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config("tiny", override)


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  max_steps: 3\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="train.batchsize"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="no config named"):
        load_config("no-such-config")


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k, _, _ in config_reference() if f"`{k}`" not in readme]
    assert not missing, f"README config reference lacks: {missing}"
    sections = [getattr(Config(), f.name) for f in dataclasses.fields(Config)]
    n_fields = sum(len(dataclasses.fields(v)) if dataclasses.is_dataclass(v) else 1 for v in sections)
    assert len(config_reference()) == n_fields
