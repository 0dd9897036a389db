"""The run directory: every run writes into its own folder, with a manifest for reproducibility.

Layout (each stage owns its files; any stage can be rerun or resumed alone):

    manifest.json        versions, command, config, models, prompt hashes, seeds, per-stage status
    records/             sampler output (see sampling.py)
    explanations.jsonl   one Explanation per line
    simulations.jsonl    one line per (explanation, record)
    scores.jsonl         one line per (explanation, scorer)
    usage.json           LLM usage and cost

JSONL files are append-only; a line is written whole (flushed and fsync'd) or not at all, so a killed run
resumes by reading what is there and skipping keys already done. A torn last line is ignored on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from autointerp.errors import RunDirError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_VERSIONED = ("autointerp", "torch", "transformers", "numpy", "openai", "anthropic", "xllamacpp", "vllm")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_hash(text: str | bytes) -> str:
    """First 16 hex digits of the sha256 of ``text``; used for prompt hashes and cache keys."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append whole lines, flushed and fsync'd."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        # A torn line from a crash is the last line without "\n": start on a fresh line.
        if f.tell() > 0:
            with open(path, "rb") as rf:
                rf.seek(-1, os.SEEK_END)
                if rf.read(1) != b"\n":
                    f.write("\n")
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield each complete JSON line; a torn (crash-truncated) line is logged and skipped."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an incomplete line (left by an interrupted run)", path, lineno)


class RunDir:
    """A run directory and its manifest."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- creation / opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, command: str, config: dict[str, Any], *, resume: bool = True) -> RunDir:
        """Create ``path`` with a fresh manifest, or reopen it when it holds a run of the same config.

        A directory holding a run with a *different* config is refused (results are never mixed)."""
        run = cls(path)
        if run.manifest_path.exists():
            old = run.manifest()
            if not resume:
                raise RunDirError(f"{path} already holds a run; pass a new --run-dir or --resume to continue it")
            if old.get("command") == command and old.get("config") != config:
                changed = sorted(
                    k for k in set(old.get("config", {})) | set(config)
                    if old.get("config", {}).get(k) != config.get(k)
                )
                raise RunDirError(
                    f"{path} holds a {command} run with other settings ({', '.join(changed)}); "
                    "use a new --run-dir"
                )
            run.update_manifest({"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            return run
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            run.manifest_path,
            {
                "command": command,
                "argv": sys.argv,
                "config": config,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "versions": package_versions(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "prompts": {},
                "stages": {},
            },
        )
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        run = cls(path)
        if not run.manifest_path.exists():
            raise RunDirError(f"{path} is not a run directory (no {MANIFEST}); pass the folder a run wrote")
        return run

    # -- manifest -----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.manifest_path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise RunDirError(f"cannot read {self.manifest_path}: {e}; the run directory is damaged") from e

    def update_manifest(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the manifest (dicts one level deep are merged too)."""
        m = self.manifest()
        for k, v in patch.items():
            if isinstance(v, dict) and isinstance(m.get(k), dict):
                m[k] = {**m[k], **v}
            else:
                m[k] = v
        atomic_write_json(self.manifest_path, m)
        return m

    def record_prompt(self, name: str, text: str) -> str:
        """Record a prompt template's hash in the manifest; returns the hash."""
        h = short_hash(text)
        self.update_manifest({"prompts": {name: h}})
        return h

    def set_stage(self, stage: str, status: str, **info: Any) -> None:
        self.update_manifest({"stages": {stage: {"status": status, **info}}})

    # -- files --------------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name
