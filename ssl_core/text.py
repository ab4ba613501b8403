"""Text cleaning and corpus reading: sources → files → documents, with every record counted.

A corpus is a comma-separated list of sources. A source is a named built-in corpus
(``builtin:python-docs``) or an fsspec path/URI/glob (local, ``file://``, ``s3://``, ``gs://``,
``hf://``) of ``.txt`` (documents separated by blank lines), ``.jsonl`` (one JSON object per line,
text in ``text_field``) or ``.parquet`` (text in column ``text_field``) files; a directory means
the supported files under it.

    from ssl_core.text import resolve_corpus, iter_documents
    shards = resolve_corpus("../shared/data/wikitext2/wiki.valid.raw")
    for doc in iter_documents(shards[0]): ...
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
import sys
import sysconfig
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ssl_core.errors import UserError

SUPPORTED = (".txt", ".jsonl", ".parquet")
_TEXT_ALIASES = (".text", ".raw", ".md")   # read as .txt
_COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


class CorpusError(UserError):
    """The corpus cannot be used as given (missing, empty, unsupported)."""


@dataclass(frozen=True)
class Shard:
    """One unit of reading work: a file (fsspec URL) or a group of built-in sources."""

    kind: str          # "txt" | "jsonl" | "parquet" | "pydoc"
    path: str          # URL, or for "pydoc" a '\n'-joined list of stdlib files ('topics' = pydoc_data)
    text_field: str = "text"


# ---------------------------------------------------------------- cleaning

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_NEWLINES = re.compile(r"\n\s*\n+")


def clean_text(text: str) -> str:
    """NFC-normalize, drop control characters, collapse runs of spaces and blank lines."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CTRL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n\n", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


_SENT_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Ms|Dr|St|No|Fig|cf|approx)\.|\b[A-Z]\.)$")


def split_sentences(text: str) -> list[str]:
    """Split cleaned text into sentences: at ., ! or ? followed by a capital or digit, and at blank
    lines (a single line break is a wrapped line); common abbreviations (e.g., Dr., single
    initials) do not end a sentence."""
    out: list[str] = []
    pending = ""
    pos = 0
    for m in _SENT_END.finditer(text):
        piece = (text[pos:m.start()] + (m.group(1) or "")).strip()
        pos = m.end()
        if not piece:
            continue
        if "\n" not in m.group(0) and _ABBREV.search(piece):
            pending = f"{pending} {piece}".strip()
            continue
        out.append(f"{pending} {piece}".strip())
        pending = ""
    tail = f"{pending} {text[pos:].strip()}".strip()
    if tail:
        out.append(tail)
    return out


def doc_hash(doc_id: str) -> int:
    """A stable 64-bit hash of a document id (same value on every machine and run)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "little")


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Stable train/validation split by the hash of the document id without its directory
    (``name.txt:LINE``): the same split however the path is spelled or wherever the file lives."""
    return (doc_hash(doc_id.rsplit("/", 1)[-1]) % 1_000_000) < val_fraction * 1_000_000


# ---------------------------------------------------------------- resolving sources

BUILTIN = {"python-docs": "docstrings of the Python standard library + pydoc topics (~2 MB, no download)"}


def _stdlib_files() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo",
            "ensurepip", "__pycache__", "tkinter"}
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if any(part in skip or part.startswith("test") for part in rel[:-1]):
            continue
        if rel[-1].startswith("test_"):
            continue
        files.append(str(p))
    return files


def _builtin_shards(name: str, n_groups: int = 16) -> list[Shard]:
    if name != "python-docs":
        raise CorpusError(f"unknown built-in corpus 'builtin:{name}' (available: "
                          + ", ".join(f"builtin:{k}" for k in BUILTIN) + ")")
    files = _stdlib_files()
    groups = [files[i::n_groups] for i in range(n_groups)]
    return [Shard("pydoc", "topics")] + [Shard("pydoc", "\n".join(g)) for g in groups if g]


def _kind_of(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    for ext in SUPPORTED:
        if name.endswith(ext):
            return ext[1:]
    if name.endswith(_TEXT_ALIASES):
        return "txt"
    return None


def resolve_corpus(corpus: str, text_field: str = "text") -> list[Shard]:
    """Expand a corpus spec into shards. Raises CorpusError naming the source and the fix."""
    import fsspec

    sources = [s.strip() for s in corpus.split(",") if s.strip()]
    if not sources:
        raise CorpusError("data.corpus is empty: give a path, a URI or builtin:python-docs")
    shards: list[Shard] = []
    for src in sources:
        if src.startswith("builtin:"):
            shards += _builtin_shards(src.split(":", 1)[1])
            continue
        try:
            fs, _, paths = fsspec.get_fs_token_paths(src)
        except ImportError as e:
            raise CorpusError(f"corpus '{src}': the filesystem for this URI is not installed ({e})") from None
        except Exception as e:  # bad URI, missing credentials, unreachable endpoint
            raise CorpusError(f"corpus '{src}': cannot open ({type(e).__name__}: {e})") from None
        files: list[str] = []
        try:
            for p in paths:
                if fs.isdir(p):
                    files += [f for f in sorted(fs.find(p)) if _kind_of(f)]
                elif fs.exists(p):
                    files.append(p)
        except PermissionError as e:
            raise CorpusError(f"corpus '{src}': access denied ({e}): check the credentials for this "
                              "store (for s3://: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                              "AWS_PROFILE)") from None
        except Exception as e:
            raise CorpusError(f"corpus '{src}': cannot list ({type(e).__name__}: {e})") from None
        if not files:
            what = "matches no file" if any(c in src for c in "*?[") else "does not exist"
            raise CorpusError(f"corpus '{src}' {what}: check the path (set data.corpus=PATH_OR_URI)")
        for f in files:
            kind = _kind_of(f)
            if kind is None:
                raise CorpusError(f"corpus file '{f}' has an unsupported extension "
                                  f"(supported: {', '.join(SUPPORTED)}, optionally compressed)")
            url = fs.unstrip_protocol(f) if fs.protocol not in ("file", ("file", "local")) else f
            if kind == "parquet":
                check_parquet_column(url, text_field)
            shards.append(Shard(kind, url, text_field))
    return shards


# ---------------------------------------------------------------- reading documents

def _docstrings(path: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                name = getattr(node, "name", "<module>")
                yield f"{path}:{getattr(node, 'lineno', 0)}:{name}", doc


def _pydoc_topics() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics
    for key in sorted(topics):
        yield f"pydoc_data.topics:{key}", inspect.cleandoc(topics[key])


def _open_text(url: str):
    import fsspec
    return fsspec.open(url, "rb", compression="infer")


DEFAULT_MAX_DOC_CHARS = 1_000_000


def _bounded_lines(fb, limit: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary file object (``\\n`` kept), none longer than ``limit`` bytes: a longer
    line comes in several parts. Works on any file object with ``read(n)`` (local, fsspec, gzip)."""
    buf = b""
    while True:
        data = fb.read(chunk)
        if not data:
            break
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start, start + limit)
            if nl >= 0:
                yield buf[start:nl + 1]
                start = nl + 1
            elif len(buf) - start >= limit:
                yield buf[start:start + limit]
                start += limit
            else:
                break
        buf = buf[start:]
    while buf:
        yield buf[:limit]
        buf = buf[limit:]


SNIFF_BYTES = 8192
BINARY_SHARE = 0.30


def looks_binary(head: bytes) -> bool:
    """Whether the first bytes of a file are not text: a NUL byte, or more than ``BINARY_SHARE``
    of the characters control characters or undecodable UTF-8 (plain text with a few stray bytes,
    e.g. a Latin-1 accent here and there, stays well below)."""
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    if len(head) == SNIFF_BYTES:                     # a multibyte character cut at the end
        text = text[:-1]
    if not text:
        return False
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f\v")
              or 0x7F <= ord(ch) < 0xA0)
    return bad / len(text) > BINARY_SHARE


def _txt_documents(url: str, counts: Counter, max_chars: int) -> Iterator[tuple[str, str]]:
    """Blank-line separated documents, read in lines of at most ``max_chars`` bytes: memory stays
    bounded whatever the file (one 100 MB line included). A file whose first KBs are not text
    (``looks_binary``) is skipped and counted; a NUL byte further on marks the rest of a file as
    binary (skipped and counted too)."""
    import codecs

    with _open_text(url) as fb:
        if looks_binary(fb.read(SNIFF_BYTES)):
            counts["files_skipped:binary"] += 1
            return
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buf: list[str] = []
    size = 0
    start = 0
    lineno = 0
    with _open_text(url) as fb:
        for raw in _bounded_lines(fb, max_chars):
            if b"\x00" in raw:
                counts["files_skipped:binary"] += 1
                if buf:
                    counts["records_read"] += 1
                    counts["skipped:binary_file"] += 1
                return
            if raw.endswith(b"\n"):
                lineno += 1
            line = dec.decode(raw, final=False)
            if "\ufffd" in line and b"\xef\xbf\xbd" not in raw:
                counts["invalid_utf8_lines"] += 1
            if line.strip():
                if not buf:
                    start = lineno
                buf.append(line)
                size += len(line)
            elif buf:
                yield f"{url}:{start}", "".join(buf)
                buf, size = [], 0
        tail = dec.decode(b"", final=True)
        if tail.strip():
            buf.append(tail)
        if buf:
            yield f"{url}:{start}", "".join(buf)


def _jsonl_documents(url: str, field: str, counts: Counter) -> Iterator[tuple[str, str]]:
    with _open_text(url) as fb:
        for lineno, raw in enumerate(_bounded_lines(fb, 1 << 28), 1):   # a record is one line
            if not raw.strip():
                continue
            counts["records_read"] += 1
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                counts["skipped:malformed_json"] += 1
                continue
            text = obj.get(field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                counts[f"skipped:{field}_missing_or_not_text"] += 1
                continue
            yield f"{url}:{lineno}", text


def check_parquet_column(url: str, field: str) -> None:
    """Raise CorpusError naming the file and its columns when ``field`` is not one of them."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(url, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
    except CorpusError:
        raise
    except Exception as e:
        raise CorpusError(f"parquet file '{url}' cannot be read ({type(e).__name__}: {e})") from None
    if field not in names:
        raise CorpusError(f"parquet file '{url}' has no column '{field}' (columns: "
                          f"{', '.join(names)}); set data.text_field=COLUMN")


def _parquet_documents(url: str, field: str, counts: Counter) -> Iterator[tuple[str, str]]:
    import fsspec
    import pyarrow.parquet as pq

    check_parquet_column(url, field)
    with fsspec.open(url, "rb") as f:
        pf = pq.ParquetFile(f)
        row = 0
        for batch in pf.iter_batches(columns=[field], batch_size=4096):
            for text in batch.column(0).to_pylist():
                counts["records_read"] += 1
                if isinstance(text, str):
                    yield f"{url}:{row}", text
                else:
                    counts[f"skipped:{field}_missing_or_not_text"] += 1
                row += 1


def _pieces(text: str, max_chars: int) -> list[str]:
    """Cut a too-long text into pieces of at most ``max_chars``, at whitespace where there is some."""
    out = []
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars)
        cut = cut if cut > 0 else max_chars
        out.append(text[:cut])
        text = text[cut:].lstrip()
    if text:
        out.append(text)
    return out


def iter_documents(shard: Shard, counts: Counter | None = None, min_chars: int = 1,
                   max_doc_chars: int = DEFAULT_MAX_DOC_CHARS) -> Iterator[dict]:
    """Yield ``{"id", "text"}`` for each usable document of a shard, cleaned.

    ``counts`` receives ``records_read`` = ``records_used`` + the ``skipped:<reason>`` counts,
    plus ``documents`` (a record longer than ``max_doc_chars`` gives several), ``files``,
    ``files_skipped:<reason>``, ``long_documents_split`` and ``invalid_utf8_lines``."""
    counts = counts if counts is not None else Counter()
    if shard.kind == "pydoc":
        raw = _pydoc_topics() if shard.path == "topics" else (
            d for p in shard.path.split("\n") for d in _docstrings(p))
    elif shard.kind == "txt":
        raw = _txt_documents(shard.path, counts, max_doc_chars)
    elif shard.kind == "jsonl":
        raw = _jsonl_documents(shard.path, shard.text_field, counts)
    elif shard.kind == "parquet":
        raw = _parquet_documents(shard.path, shard.text_field, counts)
    else:
        raise CorpusError(f"unknown shard kind {shard.kind!r}")
    counted_by_reader = shard.kind in ("jsonl", "parquet")
    counts["files"] += 1
    used_before, binary_before = counts["records_used"], counts["files_skipped:binary"]
    for doc_id, text in raw:
        if not counted_by_reader:
            counts["records_read"] += 1
        text = clean_text(text)
        if len(text) < min_chars:
            counts["skipped:too_short" if text else "skipped:empty"] += 1
            continue
        counts["records_used"] += 1
        pieces = _pieces(text, max_doc_chars) if len(text) > max_doc_chars else [text]
        if len(pieces) > 1:
            counts["long_documents_split"] += 1
        for i, piece in enumerate(pieces):
            counts["documents"] += 1
            yield {"id": doc_id if i == 0 else f"{doc_id}#{i}", "text": piece}
    if counts["records_used"] == used_before and counts["files_skipped:binary"] == binary_before:
        counts["files_without_documents"] += 1


def per_shard_limit(max_documents: int, n_shards: int) -> int:
    """Documents read per shard so that ``max_documents`` (0 = all) are read in all."""
    return -(-max_documents // max(1, n_shards)) if max_documents else 0


def document_batches(shard: Shard, data, counts: Counter | None = None,
                     limit: int = 0) -> Iterator[dict]:
    """The documents of one shard in groups of ``data.batch_rows`` (a ``DataConfig``), training
    and validation documents together, each flagged: ``{"id": [...], "text": [...], "val":
    [bool, ...]}``; at most ``limit`` documents (0 = all; counted as ``stopped_at_max_documents``).

    The one reader of the corpus: the Ray Data stage, the training loop without Ray and the
    held-out evaluation all group documents this way, so they build the same rows."""
    batch: dict[str, list] = {"id": [], "text": [], "val": []}
    n = 0
    for doc in iter_documents(shard, counts, min_chars=data.min_chars, max_doc_chars=data.max_doc_chars):
        batch["id"].append(doc["id"])
        batch["text"].append(doc["text"])
        batch["val"].append(is_validation(doc["id"], data.val_fraction))
        n += 1
        if len(batch["id"]) >= data.batch_rows:
            yield batch
            batch = {"id": [], "text": [], "val": []}
        if limit and n >= limit:
            if counts is not None:
                counts["stopped_at_max_documents"] += 1
            break
    if batch["id"]:
        yield batch


def sample_documents(shards: list[Shard], n: int, min_chars: int = 1) -> list[str]:
    """Up to ``n`` document texts, taken round-robin over shards (for tokenizer training)."""
    iters = [iter_documents(s, min_chars=min_chars) for s in shards]
    out: list[str] = []
    while iters and len(out) < n:
        alive = []
        for it in iters:
            doc = next(it, None)
            if doc is not None:
                out.append(doc["text"])
                alive.append(it)
                if len(out) >= n:
                    break
        iters = alive
    return out


if __name__ == "__main__":  # python -m ssl_core.text CORPUS: count documents
    c: Counter = Counter()
    for s in resolve_corpus(sys.argv[1] if len(sys.argv) > 1 else "builtin:python-docs"):
        for _ in iter_documents(s, c):
            pass
    print(dict(c))
