"""Export a trained encoder as one plain Hugging Face directory that three libraries load as is.

    from ssl_core.export import export_model
    out = export_model(hf_mlm_model, tokenizer_dir, "outputs/model", pooling="mean",
                       max_seq_len=128, extra_heads={"nsp_head.0.weight": ...}, config_dict=cfg.to_dict())

The directory holds

* ``config.json`` + ``model.safetensors`` (``save_pretrained`` of the ``*ForMaskedLM`` model) and the
  tokenizer files: ``AutoModelForMaskedLM``, ``AutoModel`` and ``AutoTokenizer`` load it offline;
* the sentence-transformers (v6) module files ``modules.json``, ``sentence_bert_config.json``,
  ``1_Pooling/config.json`` and ``config_sentence_transformers.json``: ``SentenceTransformer(dir)``
  loads it with no code of ours and pools as trained (``mean`` over real tokens, or ``cls``);
  when the run fitted a whitening map (``embedding.whiten``), ``2_Dense/`` applies it after pooling;
* optionally ``sslpipe_heads.safetensors`` (heads that are not part of the HF model, e.g. the NSP
  head; Hugging Face ignores the file) and ``sslpipe_config.json`` (the training config).

Written without importing sentence-transformers (a test-only dependency).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ssl_core.tokenizer import TOKENIZER_FILES, local_tokenizer_dir

if TYPE_CHECKING:                       # torch is imported where it is used: fast CLI errors
    import torch

POOLINGS = ("mean", "cls")     # what training pools with (``ssl_core.encoder.pool``)
HEADS_FILE = "sslpipe_heads.safetensors"
CONFIG_FILE = "sslpipe_config.json"
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling/config.json")
# What a plain transformers save (e.g. MLflow's fill-mask model) does not carry: the files that make
# the directory a sentence-transformers model and the sslpipe extras (paths relative to the dir).
DENSE_DIR = "2_Dense"          # the whitening map (``ssl_core.whitening``), when the run fits one
DENSE_FILES = (f"{DENSE_DIR}/config.json", f"{DENSE_DIR}/model.safetensors")
SIDE_FILES = ST_FILES + DENSE_FILES + (HEADS_FILE, CONFIG_FILE)

# Files of a tokenizer directory worth copying (a full model directory, e.g. a sentence-transformers
# one, may be given as the tokenizer directory: its weights and module files are not copied).

# sentence-transformers v6 class paths (the pre-v6 ``sentence_transformers.models.*`` still load,
# through a deprecation shim).
_ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
_ST_POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
_ST_DENSE = "sentence_transformers.base.modules.dense.Dense"
IDENTITY = "torch.nn.modules.linear.Identity"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def copy_tokenizer(tokenizer_dir: str | Path, out: Path, model_max_length: int) -> None:
    """Copy the tokenizer files; ``model_max_length`` is set to what the model was trained on, and
    fixed padding / truncation baked into ``tokenizer.json`` (some published tokenizers carry one)
    is dropped, so the raw ``tokenizers.Tokenizer`` encodes text unpadded."""
    src = Path(local_tokenizer_dir(tokenizer_dir))
    if not (src / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer directory '{src}' has no tokenizer.json")
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
            shutil.copy2(src / name, out / name)
    tj = out / "tokenizer.json"
    data = json.loads(tj.read_text(encoding="utf-8"))
    if data.get("padding") is not None or data.get("truncation") is not None:
        data["padding"] = data["truncation"] = None
        tj.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tc = out / "tokenizer_config.json"
    conf = json.loads(tc.read_text(encoding="utf-8")) if tc.is_file() else {}
    conf["model_max_length"] = int(model_max_length)
    _write_json(tc, conf)


def write_sentence_transformers_files(out: Path, hidden_size: int, pooling: str, max_seq_len: int,
                                      model_kwargs: dict | None = None) -> None:
    """The module files ``SentenceTransformer(out)`` needs: Transformer (this directory) → Pooling."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    st_conf = {
        "max_seq_length": int(max_seq_len),
        "do_lower_case": False,
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings",
    }
    if model_kwargs:
        st_conf["model_kwargs"] = model_kwargs
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST_POOLING},
    ])
    _write_json(out / "sentence_bert_config.json", st_conf)
    _write_json(out / "1_Pooling" / "config.json",
                {"embedding_dimension": int(hidden_size), "pooling_mode": pooling, "include_prompt": True})
    versions = {k: v for k, v in (("sentence_transformers", _version("sentence-transformers")),
                                  ("transformers", _version("transformers")),
                                  ("pytorch", _version("torch"))) if v}
    _write_json(out / "config_sentence_transformers.json", {
        "__version__": versions, "model_type": "SentenceTransformer", "prompts": {},
        "default_prompt_name": None, "similarity_fn_name": "cosine",
    })


def add_dense_module(out: str | Path, weight, bias) -> None:
    """Append a linear map of the pooled embedding (``x @ weight.T + bias``, no activation) to the
    sentence-transformers modules of ``out``, as ST's own ``Dense`` saves it; replaces an earlier one."""
    import numpy as np
    from safetensors.numpy import save_file

    out = Path(out)
    w = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    mods = [m for m in json.loads((out / "modules.json").read_text(encoding="utf-8"))
            if m.get("path") != DENSE_DIR]
    mods.append({"idx": len(mods), "name": str(len(mods)), "path": DENSE_DIR, "type": _ST_DENSE})
    _write_json(out / "modules.json", mods)
    _write_json(out / DENSE_DIR / "config.json", {
        "in_features": int(w.shape[1]), "out_features": int(w.shape[0]), "bias": True,
        "activation_function": IDENTITY,
        "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"})
    save_file({"linear.weight": w, "linear.bias": b}, str(out / DENSE_DIR / "model.safetensors"))


def _encoder_kwargs(model) -> dict:
    """``add_pooling_layer=False`` when the bare encoder class takes it (BERT, RoBERTa, ...): the MLM
    checkpoint has no pooler, and pooling is done by the Pooling module, so none is built."""
    import inspect

    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if base is not None and "add_pooling_layer" in inspect.signature(type(base).__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def export_model(hf_model, tokenizer_dir: str | Path, out_dir: str | Path, *, pooling: str = "mean",
                 max_seq_len: int = 128, extra_heads: dict[str, "torch.Tensor"] | None = None,
                 config_dict: dict | None = None) -> Path:
    """Write ``hf_model`` (a ``*ForMaskedLM``, or a wrapper around one) + tokenizer + the
    sentence-transformers module files (+ extra heads, + training config) into ``out_dir``."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    from transformers.utils import logging as hf_logging

    from ssl_core.encoder import unwrap, usable_positions   # torch: only when exporting

    hf_logging.disable_progress_bar()                     # no "Writing model shards" bar in logs

    model = unwrap(hf_model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)                              # config.json + model.safetensors
    max_pos = usable_positions(model.config)
    length = min(int(max_seq_len), max_pos) if max_pos else int(max_seq_len)
    copy_tokenizer(tokenizer_dir, out, length)
    write_sentence_transformers_files(out, model.config.hidden_size, pooling, length,
                                      _encoder_kwargs(model))
    if (out / DENSE_DIR).exists():
        shutil.rmtree(out / DENSE_DIR)                      # the map of an earlier export's encoder
    heads = out / HEADS_FILE
    if extra_heads:
        import torch
        from safetensors.torch import save_file
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in extra_heads.items()},
                  str(heads))
    elif heads.exists():
        heads.unlink()                                      # stale heads of an earlier export
    if config_dict is not None:
        _write_json(out / CONFIG_FILE, config_dict)
    return out
