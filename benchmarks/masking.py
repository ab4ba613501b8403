"""MLM masking speed: sslpipe's numpy masking vs Hugging Face's DataCollatorForLanguageModeling.

One core, the same token ids (256 x 128 packed from real text), 15%, 80/10/10.

* masking:      ours as the pipeline calls it (``MlmMasker.keyed`` on the (B, T) numpy batch that
                Ray Data hands over) vs the collator as the HF Trainer calls it (a list of
                tokenized examples in, a padded, masked batch out).
* masking_core: ours (same call) vs the collator's mask-only path ``torch_mask_tokens`` on the same
                tensor, given the special-tokens mask precomputed (its fastest use).
* masking_wwm:  whole-word masking: ours (``strategy="whole_word"``, word starts as Ray Data hands
                them over) vs ``DataCollatorForLanguageModeling(whole_word_mask=True)`` on the same
                256 x 128 encodings (examples with offset_mapping and special_tokens_mask, as it needs).

    python benchmarks/masking.py [--repeats 200]

Ends with ``RATIO masking <x>``, ``RATIO masking_core <x>`` and ``RATIO masking_wwm <x>``
(ours / reference, tokens/s).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ssl_core.masking import MlmMasker
from ssl_core.packing import pack_documents
from ssl_core.text import resolve_corpus, sample_documents
from ssl_core.tokenizer import load_fast, special_ids, train_wordpiece

B, T = 256, 128


def token_ids(tmp: Path):
    texts = sample_documents(resolve_corpus("builtin:python-docs"), 3000, min_chars=20)
    tok_dir = train_wordpiece(texts, tmp / "tok", vocab_size=8000)
    tok = load_fast(tok_dir)
    sp = special_ids(tok)
    docs = [np.asarray(e.ids, np.int32) for e in tok.encode_batch(texts, add_special_tokens=False)]
    ids, _ = pack_documents(docs, T, cls_id=sp["cls"], sep_id=sp["sep"], pad_id=sp["pad"])
    assert len(ids) >= B, "not enough text for the benchmark batch"
    return tok_dir, ids[:B]


def timeit(fn, repeats: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    from ssl_core.perf import cpu_line
    print(cpu_line(), flush=True)
    torch.set_num_threads(1)

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    with tempfile.TemporaryDirectory() as d:
        tok_dir, ids32 = token_ids(Path(d))
        hf_tok = AutoTokenizer.from_pretrained(tok_dir)
    masker = MlmMasker.from_tokenizer(hf_tok, ratio=0.15, mask_prob=0.8, random_prob=0.1)
    collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, mask_replace_prob=0.8,
                                               random_replace_prob=0.1, seed=0)
    examples = [{"input_ids": row.tolist()} for row in ids32]      # what a tokenized HF dataset yields
    ids_t = torch.as_tensor(ids32, dtype=torch.long)
    special = torch.as_tensor(np.isin(ids32, masker.special_ids))
    n_tok = B * T

    # sanity: both mask ~15% of the non-special tokens
    _, lab = masker.keyed(ids32, seed=0)
    hb = collator(examples)
    ours_rate = (lab != -100).sum() / (~special.numpy()).sum()
    hf_rate = (hb["labels"] != -100).sum().item() / (~special.numpy()).sum()
    print(f"masked share of non-special tokens: ours {ours_rate:.4f}, HF {hf_rate:.4f}")

    epoch = iter(range(10**9))
    cases = {
        "ours keyed (pipeline)": lambda: masker.keyed(ids32, seed=0, epoch=next(epoch)),
        "ours Generator": (lambda g=np.random.default_rng(0): masker(ids32, g)),
        "HF collator(list of examples)": lambda: collator(examples),
        "HF torch_mask_tokens(tensor)": lambda: collator.torch_mask_tokens(ids_t.clone(), special),
    }
    # interleave rounds so that machine noise hits every case alike
    times = {k: [] for k in cases}
    rounds = 5
    for _ in range(rounds):
        for k, fn in cases.items():
            times[k] += timeit(fn, max(1, args.repeats // rounds))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:32s} median {v * 1e3:8.3f} ms  {n_tok / v / 1e6:8.1f} Mtok/s")
    # whole-word masking on encodings with offsets (what the HF collator needs for it)
    from ssl_core.examples import continuation_lut
    texts = [t for t in sample_documents(resolve_corpus("builtin:python-docs"), 6000, min_chars=600)]
    enc = hf_tok(texts, truncation=True, max_length=T, padding="max_length",
                 return_offsets_mapping=True, return_special_tokens_mask=True)
    full = [i for i, m in enumerate(enc["attention_mask"]) if sum(m) == T][:B]
    assert len(full) == B, f"only {len(full)} full-length texts"
    wwm_examples = [{k: enc[k][i] for k in ("input_ids", "offset_mapping", "special_tokens_mask")}
                    for i in full]
    ids_w = np.asarray([enc["input_ids"][i] for i in full], dtype=np.int32)
    lut = continuation_lut(hf_tok.backend_tokenizer)
    ws = ~lut[ids_w]
    wwm = MlmMasker.from_tokenizer(hf_tok, strategy="whole_word")
    wwm_collator = DataCollatorForLanguageModeling(hf_tok, mlm_probability=0.15, whole_word_mask=True,
                                                   mask_replace_prob=0.8, random_replace_prob=0.1, seed=0)
    _, lab = wwm.keyed(ids_w, seed=0, word_start=ws)
    hb = wwm_collator(wwm_examples)
    elig = ~np.isin(ids_w, wwm.special_ids)
    print(f"whole-word masked share: ours {(lab != -100).sum() / elig.sum():.4f}, "
          f"HF {(hb['labels'] != -100).sum().item() / elig.sum():.4f}")
    wcases = {"ours whole_word keyed": lambda: wwm.keyed(ids_w, seed=0, epoch=next(epoch), word_start=ws),
              "HF collator whole_word_mask": lambda: wwm_collator(wwm_examples)}
    wtimes = {k: [] for k in wcases}
    for _ in range(rounds):
        for k, fn in wcases.items():
            wtimes[k] += timeit(fn, max(1, args.repeats // rounds // (4 if "HF" in k else 1)))
    wmed = {k: statistics.median(v) for k, v in wtimes.items()}
    for k, v in wmed.items():
        print(f"{k:32s} median {v * 1e3:8.3f} ms  {n_tok / v / 1e6:8.1f} Mtok/s")
    print(f"RATIO masking {med['HF collator(list of examples)'] / med['ours keyed (pipeline)']:.1f}")
    print(f"RATIO masking_core {med['HF torch_mask_tokens(tensor)'] / med['ours keyed (pipeline)']:.1f}")
    print(f"RATIO masking_wwm {wmed['HF collator whole_word_mask'] / wmed['ours whole_word keyed']:.1f}")


if __name__ == "__main__":
    main()
