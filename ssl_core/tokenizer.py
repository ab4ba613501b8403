"""Train or load a WordPiece tokenizer, saved as a Hugging Face fast-tokenizer directory.

The directory loads with ``transformers.AutoTokenizer.from_pretrained(dir)`` (offline) and, for
speed inside Ray Data, as a raw ``tokenizers.Tokenizer`` from ``dir/tokenizer.json``.

    python -m ssl_core.tokenizer CORPUS OUT_DIR [VOCAB_SIZE]
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer directory carried by value: its files' bytes travel with the job (pickled
    through Ray's object store), so a worker on a node that does not share the driver's disk
    loads the same tokenizer. ``local_dir()`` writes them once per node (content-addressed)."""
    files: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_dir(cls, tok_dir: str | Path) -> "TokenizerFiles":
        src = Path(tok_dir)
        if not (src / "tokenizer.json").is_file():
            raise FileNotFoundError(f"tokenizer directory '{src}' has no tokenizer.json")
        return cls(tuple((n, (src / n).read_bytes()) for n in TOKENIZER_FILES if (src / n).is_file()))

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, data in self.files:
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:16]

    def local_dir(self) -> Path:
        out = Path(tempfile.gettempdir()) / f"sslpipe-tokenizer-{self.digest()}"
        if (out / "tokenizer.json").is_file():
            return out
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        for name, data in self.files:
            (tmp / name).write_bytes(data)
        try:
            os.replace(tmp, out)             # atomic: concurrent workers on one node agree
        except OSError:                      # another process got there first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        return out


def local_tokenizer_dir(tok: "str | Path | TokenizerFiles") -> str:
    """A directory on this machine holding the tokenizer ``tok`` names or carries."""
    return str(tok.local_dir() if isinstance(tok, TokenizerFiles) else tok)


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


def load_fast(tok_dir: "str | Path | TokenizerFiles"):
    """The raw ``tokenizers.Tokenizer`` (no transformers import; what Ray Data actors use)."""
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(Path(local_tokenizer_dir(tok_dir)) / "tokenizer.json"))


def special_ids(tok) -> dict[str, int]:
    """Ids of the special tokens of a raw tokenizer, by name (pad, unk, cls, sep, mask)."""
    return {name.strip("[]").lower(): tok.token_to_id(name) for name in SPECIALS}


if __name__ == "__main__":
    from ssl_core.text import resolve_corpus, sample_documents
    corpus, out = sys.argv[1], sys.argv[2]
    vs = int(sys.argv[3]) if len(sys.argv) > 3 else 8000
    print(train_wordpiece(sample_documents(resolve_corpus(corpus), 20000), out, vs))
