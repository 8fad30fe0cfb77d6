"""The safetensors file format, read and written without torch or pickle.

:class:`SafetensorsFile` reads one tensor at a time with ``pread`` at the offsets in the header (validated
first: every malformed header or entry is a :class:`CheckpointError` naming the file and tensor);
:func:`write_safetensors` streams tensors into a file as they are produced. ``safe_open`` from the
``safetensors`` package is kept as an alternative reader (``reader="safe_open"``).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np


from proactive_jax.errors import CheckpointError, CorruptCheckpointError  # noqa: F401  (re-exported)


def _np_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes

    return {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
            "BF16": np.dtype(ml_dtypes.bfloat16)}


_ST_NAME = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


_MAX_HEADER = 100 * 1024 * 1024
# metadata key of the per-tensor CRC-32s this package writes (a JSON object; other readers ignore it)
CRC_KEY = "proactive_jax.crc32"


class SafetensorsFile:
    """A lazily read ``.safetensors`` file: the header is parsed on open, tensors are read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = open(self.path, "rb")
        try:
            self._parse()
        except BaseException:
            self._f.close()
            raise

    def _parse(self):
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{self.path}: not a safetensors file (header length {n} does not fit "
                                  f"in a file of {size} bytes)")
        try:
            header = json.loads(self._f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        try:
            self.crc = json.loads(self.metadata[CRC_KEY]) if CRC_KEY in self.metadata else {}
        except (TypeError, json.JSONDecodeError):
            raise CheckpointError(f"{self.path}: metadata {CRC_KEY!r} is not a JSON object") from None
        self._data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry {e!r}") from None
            item = _itemsize(dtype)
            if item is not None and end - begin != math.prod(shape) * item:
                raise CheckpointError(f"{self.path}: tensor {name!r} data_offsets [{begin}, {end}] do not match "
                                      f"shape {list(shape)} and dtype {dtype}")
            if not 0 <= begin <= end or self._data_start + end > size:
                raise CheckpointError(f"{self.path}: tensor {name!r} data_offsets [{begin}, {end}] lie outside "
                                      f"the file ({size} bytes; file truncated?)")
            self.entries[name] = (dtype, shape, begin, end)

    def keys(self) -> list[str]:
        return list(self.entries)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        dtype, shape, _, _ = self.entries[name]
        return dtype, shape

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor as a numpy array (bf16 as ``ml_dtypes.bfloat16``).

        With ``out`` (C-contiguous, same dtype and shape) the bytes are read straight into it; otherwise
        into a fresh buffer.
        """
        dtype, shape, begin, end = self.entries[name]
        npd = _np_dtypes().get(dtype)
        if npd is None:
            raise CheckpointError(f"{self.path}: tensor {name!r} has dtype {dtype}; expected a floating "
                                  f"dtype ({', '.join(_np_dtypes())})")
        direct = (out is not None and out.dtype == npd and out.shape == shape and out.flags.c_contiguous)
        buf = out.reshape(-1).view(np.uint8) if direct else np.empty(end - begin, np.uint8)
        view, off = memoryview(buf), self._data_start + begin
        got = 0
        while got < len(buf):
            k = os.preadv(self._f.fileno(), [view[got:]], off + got)
            if k <= 0:
                raise CheckpointError(f"{self.path}: unexpected end of file reading tensor {name!r}")
            got += k
        want = self.crc.get(name)
        if want is not None and f"{zlib.crc32(buf):08x}" != want:
            raise CorruptCheckpointError(f"{self.path}: tensor {name!r}: CRC-32 mismatch (written {want}, read "
                                         f"{zlib.crc32(buf):08x}): the file changed after it was written")
        return out if direct else buf.view(npd).reshape(shape)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _itemsize(st_dtype: str) -> int | None:
    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
             "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
    return sizes.get(st_dtype)


class _SafeOpenFile:
    """The same interface over ``safetensors.safe_open`` (mmap based); kept for comparison (bench)."""

    def __init__(self, path):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            self._f = safe_open(str(path), framework="numpy")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{self.path}: cannot open as safetensors ({e})") from None
        self.metadata = self._f.metadata() or {}

    def keys(self):
        return list(self._f.keys())

    def info(self, name):
        sl = self._f.get_slice(name)
        return str(sl.get_dtype()), tuple(sl.get_shape())

    def read(self, name, out=None):
        return self._f.get_tensor(name)

    def close(self):
        self._f = None


_READERS = {"pread": SafetensorsFile, "safe_open": _SafeOpenFile}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB" (10**9), "500MiB" (2**20), "10KB"."""
    if isinstance(size, (int, np.integer)):
        return int(size)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '5GB', '500MiB'")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    power = "_KMGT".index(unit) if unit else 0
    return int(num * ((1024 if binary else 1000) ** power))


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], get: Callable[[str], np.ndarray],
                       st_dtype: str, itemsize: int) -> None:
    """Stream a safetensors file: header from the shapes, then each tensor as it is produced.

    The header's metadata carries a CRC-32 per tensor (``CRC_KEY``), which :class:`SafetensorsFile`
    verifies on every read: the header is written with zeros first (fixed width) and rewritten in place
    once every tensor's bytes are known."""
    def header_bytes(crcs: dict[str, str]) -> bytes:
        header: dict[str, Any] = {"__metadata__": {"format": "pt", CRC_KEY: json.dumps(crcs, sort_keys=True)}}
        off = 0
        for name, shape in tensors:
            n = math.prod(shape) * itemsize
            header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        return raw + b" " * (-len(raw) % 8)

    crcs = {name: "00000000" for name, _ in tensors}
    raw = header_bytes(crcs)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape in tensors:
            x = get(name)
            if x.shape != tuple(shape):
                raise CheckpointError(f"tensor {name!r}: produced shape {list(x.shape)}, expected {list(shape)}")
            data = x.reshape(-1).view(np.uint8).data
            crcs[name] = f"{zlib.crc32(data):08x}"
            f.write(data)
            del x, data
        final = header_bytes(crcs)
        assert len(final) == len(raw)  # fixed-width CRCs: same header length
        f.seek(8)
        f.write(final)
        f.flush()
        os.fsync(f.fileno())


def remove_stale(parent: Path, pattern: str, *, min_age_s: float = 600.0) -> list[Path]:
    """Remove the temporaries a killed writer left in ``parent``: entries whose name fully matches the regex
    ``pattern`` (which captures the writer's pid as group ``pid``), older than ``min_age_s`` and whose pid is
    not a live process on this machine. Nothing else is touched. Returns what was removed."""
    import shutil

    rx = re.compile(pattern)
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        m = rx.fullmatch(p.name)
        if m is None:
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        pid = int(m.group("pid"))
        if age < min_age_s or (pid != os.getpid() and _pid_alive(pid)) or pid == os.getpid():
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
