import re
from pathlib import Path

import pytest

from pipelines import configs
from pipelines.configs import load_config
from ssl_core.config import Config, ConfigError, config_reference

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
    (["train.resources_per_worker=sslpipe_train"], "train.resources_per_worker"),
    (["train.resources_per_worker=GPU:1"], "train.use_gpu"),
    (["data.resources=sslpipe_data:-1"], "data.resources"),
    (["train.placement=RANDOM"], "train.placement"),
    (["embedding.whiten=true", "embedding.whiten_sentences=100"], "2 x model.hidden_size (128)"),
    (["embedding.whiten_sentences=1"], "embedding.whiten_sentences"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config("tiny", override)


def test_resources_reach_ray_as_amounts():
    from pipelines.data import data_resources
    from pipelines.train import worker_resources
    c = load_config("cluster-gpu", ["train.cpus_per_worker=3"])
    assert worker_resources(c) == {"CPU": 3.0, "sslpipe_train": 1.0} and c.train.use_gpu
    assert data_resources(c) == {"resources": {"sslpipe_data": 0.01}}
    assert data_resources(load_config("tiny")) == {}


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  max_steps: 3\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match="train.batchsize"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="no config named"):
        load_config("no-such-config")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_readme_and_help_document_every_config_key():
    readme = (ROOT / "README.md").read_text()
    ref = config_reference()
    missing = [k for k, _, _ in ref if f"`{k}`" not in readme]
    assert not missing, f"README config reference lacks: {missing}"
    # the reference (what --help prints) is every key of the config, with its real default
    assert {k: v for k, _, v in ref} == _flat(Config().to_dict())


def test_every_key_round_trips_through_set():
    """Each key accepts its own default written on the command line, and a saved config (what
    `--resume` and the evaluation read back) rebuilds the same Config."""
    sets = [f"{k}={v}" for k, _, v in config_reference() if not isinstance(v, str) or v]
    assert load_config(None, sets) == Config()
    tiny = load_config("tiny")
    assert Config.from_dict(tiny.to_dict()) == tiny != Config()


def test_shipped_configs_are_package_resources():
    assert {"default", "tiny"} <= set(configs.names())
    for name in configs.names():
        assert load_config(name).validate() is not None
