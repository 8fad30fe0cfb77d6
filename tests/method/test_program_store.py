"""Stored traced programs: a later process loads the program instead of tracing it, with the same results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method import program_store as PS

TRACES = []


def affine(scale, x, params):
    TRACES.append(scale)
    return {"y": x * scale + params["b"], "n": jnp.sum(x > 0)}


@pytest.fixture
def store(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    jax.config.update("jax_enable_compilation_cache", True)
    PS._LOADED.clear()
    TRACES.clear()
    yield tmp_path / PS.SUBDIR
    PS._LOADED.clear()
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_enable_compilation_cache", before[1])


def _args(n=4):
    return np.arange(n, dtype=np.float32) - 1, {"b": jnp.ones((), jnp.float32)}


def test_stored_program_is_loaded_not_traced(store):
    ref = jax.jit(affine, static_argnums=0)(3.0, *_args())
    TRACES.clear()
    out = PS.call_stored(affine, (3.0,), *_args())
    assert TRACES == [3.0] and len(list(store.glob("affine-*.jaxexport"))) == 1
    PS._LOADED.clear()  # a new process: nothing loaded
    again = PS.call_stored(affine, (3.0,), *_args())
    assert TRACES == [3.0], "the stored program ran without tracing the Python function"
    for got in (out, again):
        np.testing.assert_array_equal(got["y"], ref["y"])
        assert int(got["n"]) == int(ref["n"]) == 2
    # other static values or shapes are other programs
    PS.call_stored(affine, (2.0,), *_args())
    PS.call_stored(affine, (3.0,), *_args(6))
    assert TRACES == [3.0, 2.0, 3.0] and len(list(store.glob("affine-*.jaxexport"))) == 3


def test_damaged_program_is_traced_again(store):
    PS.call_stored(affine, (3.0,), *_args())
    (path,) = store.glob("affine-*.jaxexport")
    path.write_bytes(b"not a program")
    PS._LOADED.clear()
    out = PS.call_stored(affine, (3.0,), *_args())
    assert TRACES == [3.0, 3.0]
    np.testing.assert_array_equal(out["y"], np.array([-2, 1, 4, 7], np.float32))
    assert path.read_bytes() != b"not a program"  # rewritten


def test_without_a_compilation_cache_it_is_plain_jit(tmp_path):
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        assert PS.store_dir() is None
        out = PS.call_stored(affine, (3.0,), *_args())
        np.testing.assert_array_equal(out["y"], np.array([-2, 1, 4, 7], np.float32))
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def test_key_covers_the_source():
    a = PS.program_key("f", (1,), _args())
    assert a == PS.program_key("f", (1,), _args())
    assert a != PS.program_key("f", (2,), _args()) and a != PS.program_key("g", (1,), _args())
    PS.source_digest.cache_clear()
    real = PS.source_digest
    try:
        PS.source_digest = lambda: "edited"
        assert PS.program_key("f", (1,), _args()) != a
    finally:
        PS.source_digest = real
