"""Read tensors lazily: members of ``.npz`` archives memory-mapped in place, safetensors by name.

An ``.npz`` written by ``np.savez`` stores each array uncompressed inside a zip: such a member is
memory-mapped directly at its offset in the archive (no copy, no extraction). A compressed member
(``np.savez_compressed``) is extracted once to ``<cache>/npz/`` and memory-mapped from there.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autointerp.errors import UserError
from autointerp.paths import cache_dir

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes


@dataclass(frozen=True)
class NpyMember:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int | None
    """Byte offset of the array data in the archive when stored uncompressed, else None."""


def _read_npy_header(fp: object) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)  # type: ignore[arg-type]
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)  # type: ignore[arg-type]
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)  # type: ignore[arg-type]
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype)


def npz_members(path: Path) -> dict[str, NpyMember]:
    """Shape, dtype and data offset of every array in an ``.npz``, reading headers only."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(
            f"{path} is not a readable .npz archive ({e}); it is truncated or corrupt: download it again"
        ) from e
    out: dict[str, NpyMember] = {}
    with zf, open(path, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            try:
                if info.compress_type == zipfile.ZIP_STORED:
                    raw.seek(info.header_offset)
                    fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                    if fields[0] != b"PK\x03\x04":
                        raise ValueError("bad local header")
                    raw.seek(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
                    shape, fortran, dtype = _read_npy_header(raw)
                    offset: int | None = raw.tell()
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if offset is None or offset + nbytes > size:
                        raise ValueError(f"data of {name} runs past the end of the file")
                else:
                    with zf.open(info) as member:
                        shape, fortran, dtype = _read_npy_header(member)
                    offset = None
            except (ValueError, OSError, zipfile.BadZipFile, struct.error) as e:
                raise UserError(
                    f"{path}: array {name!r} is unreadable ({e}); the file is truncated: download it again"
                ) from e
            out[name] = NpyMember(name, shape, dtype, fortran, offset)
    return out


def npz_loader(path: Path, member: NpyMember) -> Callable[[], torch.Tensor]:
    """A callable returning ``member`` as a CPU tensor backed by a memory map (copy-on-write)."""

    def load() -> torch.Tensor:
        arr: np.ndarray
        if member.offset is not None:
            arr = np.memmap(
                path,
                dtype=member.dtype,
                mode="c",
                offset=member.offset,
                shape=member.shape,
                order="F" if member.fortran else "C",
            )
        else:
            arr = np.load(_extracted(path, member.name), mmap_mode="c")
        if arr.dtype.byteorder == ">" or arr.dtype not in (np.float16, np.float32, np.float64):
            arr = np.asarray(arr, dtype=np.float32)
        return torch.from_numpy(arr)

    return load


def _extracted(path: Path, name: str) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "npz" / key / f"{name}.npy"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
        os.replace(tmp, target)
    return target


def safetensors_index(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a ``.safetensors`` file, reading its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(int(s) for s in f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError: truncated / not a safetensors file
        raise UserError(
            f"{path} is not a readable safetensors file ({e}); it is truncated or corrupt: download it again"
        ) from e


def safetensors_loader(path: Path, name: str) -> Callable[[], torch.Tensor]:
    def load() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    return load
