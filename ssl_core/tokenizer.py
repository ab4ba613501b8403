"""Train or load a WordPiece tokenizer, saved as a Hugging Face fast-tokenizer directory.

The directory loads with ``transformers.AutoTokenizer.from_pretrained(dir)`` (offline) and, for
speed inside Ray Data, as a raw ``tokenizers.Tokenizer`` from ``dir/tokenizer.json``.

    python -m ssl_core.tokenizer CORPUS OUT_DIR [VOCAB_SIZE]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                    lowercase: bool = True, min_frequency: int = 2, model_max_length: int = 512) -> Path:
    """Train a BERT-style WordPiece tokenizer on ``texts`` and save it to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIALS, continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return save_tokenizer(tok, out_dir, lowercase=lowercase, model_max_length=model_max_length)


def save_tokenizer(tok, out_dir: str | Path, lowercase: bool = True, model_max_length: int = 512) -> Path:
    """Save a ``tokenizers.Tokenizer`` so that ``AutoTokenizer.from_pretrained`` loads it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "model_max_length": model_max_length,
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: cfg[k] for k in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")}, indent=2))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    return out


def load_fast(tok_dir: str | Path):
    """The raw ``tokenizers.Tokenizer`` (no transformers import; what Ray Data actors use)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))


def special_ids(tok) -> dict[str, int]:
    """Ids of the special tokens of a raw tokenizer, by name (pad, unk, cls, sep, mask)."""
    return {name.strip("[]").lower(): tok.token_to_id(name) for name in SPECIALS}


if __name__ == "__main__":
    from ssl_core.text import resolve_corpus, sample_documents
    corpus, out = sys.argv[1], sys.argv[2]
    vs = int(sys.argv[3]) if len(sys.argv) > 3 else 8000
    print(train_wordpiece(sample_documents(resolve_corpus(corpus), 20000), out, vs))
