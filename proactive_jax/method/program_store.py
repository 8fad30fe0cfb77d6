"""Traced programs kept across processes, beside JAX's persistent compilation cache.

JAX's compilation cache skips XLA's compilation in a later process, but every process still traces the Python
program (for the decode loop on the tiny demo model about 1-2 s of a second ``eval``'s start on a loaded 2-core
CPU). :func:`call_stored` runs ``jit(fun)`` the first time as a ``jax.export`` of it, written to
``<compilation cache>/programs/``; a later process with the same program loads it instead of tracing, and its
compilation then comes from the compilation cache. The file is keyed by the program's name, its static arguments,
the argument tree with shapes and dtypes, the platform, the JAX and Flax versions and a digest of the source of
:mod:`proactive_jax.models` and :mod:`proactive_jax.method` (any change to the code traces afresh). Without a
compilation cache (``PROACTIVE_JAX_CACHE=off``, the tests) this is plain ``jit``. An unreadable stored program is
traced again and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import jax

SUBDIR = "programs"
_LOADED: dict[str, Callable] = {}


def store_dir() -> Path | None:
    """``<JAX compilation cache dir>/programs`` when the persistent cache is on, else None."""
    cfg = jax.config
    if not getattr(cfg, "jax_enable_compilation_cache", True):
        return None
    d = getattr(cfg, "jax_compilation_cache_dir", None)
    return Path(d) / SUBDIR if d else None


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of the package's model and method source: the code a stored program was traced from."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("models", "method"):
        for p in sorted((root / sub).glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:24]


def _flax_version() -> str:
    import flax

    return getattr(flax, "__version__", "")


def _aval(x) -> str:
    a = jax.api_util.shaped_abstractify(x)
    return f"{a.dtype}{list(a.shape)}{'w' if getattr(a, 'weak_type', False) else ''}"


def program_key(name: str, static: tuple, args: tuple, platform: str = "") -> str:
    leaves, tree = jax.tree.flatten(args)
    h = hashlib.sha256()
    for part in (name, repr(static), str(tree), ",".join(_aval(x) for x in leaves), platform or jax.default_backend(),
                 jax.__version__, _flax_version(), source_digest()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def call_stored(fun: Callable, static: tuple, *args, jitted: Callable | None = None):
    """``fun(*static, *args)`` compiled; ``static`` hashable values baked into the program (``jitted``: the
    caller's ``jit(fun, static_argnums=...)``, used when no store is configured)."""
    d = store_dir()
    if d is None:
        return (jitted or jax.jit(fun, static_argnums=tuple(range(len(static)))))(*static, *args)
    platform = _platform(args)
    if platform is None:  # arrays on several platforms: left to jit's placement rules
        return (jitted or jax.jit(fun, static_argnums=tuple(range(len(static)))))(*static, *args)
    key = program_key(fun.__name__, static, args, platform)
    run = _LOADED.get(key)
    if run is None:
        run = _load_or_export(d / f"{fun.__name__}-{key}.jaxexport", fun, static, args, platform)
        _LOADED[key] = run
    return run(*args)


def _platform(args: tuple) -> str | None:
    """Where ``jit`` would run on these arguments: the platform of their device arrays (host arrays follow them),
    else the default backend; None when they are on several platforms."""
    found = {d.platform for x in jax.tree.leaves(args) if isinstance(x, jax.Array) for d in x.devices()}
    if len(found) > 1:
        return None
    return found.pop() if found else jax.default_backend()


def _load_or_export(path: Path, fun: Callable, static: tuple, args: tuple, platform: str) -> Callable:
    """The stored program of ``path`` (``jax.export``'s serialized form: StableHLO plus its calling convention,
    no Python objects), else ``fun`` exported now and stored; programs with shardings are not stored
    (single-device programs only) and run as plain ``jit``."""
    from jax import export

    exp = None
    if path.is_file():
        try:
            exp = export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # noqa: BLE001 - a damaged or foreign file: trace again
            exp = None
    if exp is None:
        exp = export.export(jax.jit(functools.partial(fun, *static)), platforms=[platform])(*args)
        if any(s is not None for s in (*exp.in_shardings_hlo, *exp.out_shardings_hlo)) or exp.nr_devices != 1:
            return jax.jit(functools.partial(fun, *static))
        try:
            data = bytes(exp.serialize())
        except Exception:  # noqa: BLE001 - something in the program cannot be stored: run it unstored
            data = None
        if data is not None:
            _write_atomic(path, data)

    def call(*a):
        return exp.call(*a)

    call.__name__ = call.__qualname__ = fun.__name__  # the compile-time status line names the program
    return jax.jit(call)


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full cache directory: the program still runs, it is traced again next time
