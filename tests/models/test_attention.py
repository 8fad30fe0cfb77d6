"""Fused attention paths equal the dense reference: the Pallas block-sparse kernel in interpret mode (outputs and
gradients) on the mask vectors of the packed dual view and of a decode cache; the dispatch of model.attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.method.objective import ObjectiveConfig, batch_schedules, pack_batch, packed_inputs, stream_limits
from proactive_jax.models.attention import MaskVectors, attend, dense_attention, visibility_mask
from tests.helpers import tiny_qwen3
from tests.streaming_util import random_example

try:
    from proactive_jax.models.pallas_attention import flash_local
except ImportError as e:  # pragma: no cover - Pallas missing from this jax build
    pytest.skip(f"Pallas is unavailable ({e}); the kernel cannot run in interpret mode", allow_module_level=True)

H, KV, D = 4, 2, 16


def packed_view_vectors(seed: int):
    """Mask vectors of the packed dual view of a random padded batch (schedules sampled as in training)."""
    rng = np.random.default_rng(seed)
    batch = pack_batch([random_example(rng) for _ in range(2)], (24, 12), batch_size=3)  # one padding row
    batch = jax.tree.map(jnp.asarray, batch)
    obj = ObjectiveConfig()
    limits = stream_limits(batch, batch_schedules(batch, jax.random.PRNGKey(seed), obj))
    _, _, mv = packed_inputs(batch, limits, obj)
    return mv, mv.segment, mv.index


def decode_cache_vectors(seed: int, cap: int = 40, s_cap: int = 24):
    """A decode step: a cache of ``cap`` slots (source slots < s_cap, then target slots; empty = -1) and a fed
    chunk of 3 source tokens plus 2 target tokens (re-fed under the new visibility)."""
    rng = np.random.default_rng(seed)
    b = 3
    k_seg = np.full((b, cap), -1, np.int32)
    q_seg, q_idx, q_lim = (np.zeros((b, 5), np.int32) for _ in range(3))
    for r in range(b):
        n_src = int(rng.integers(4, s_cap - 3))
        n_tgt = int(rng.integers(2, cap - s_cap))
        k_seg[r, :n_src + 3] = 0
        k_seg[r, s_cap:s_cap + n_tgt] = 1
        q_seg[r] = [0, 0, 0, 1, 1]
        q_idx[r] = [n_src, n_src + 1, n_src + 2, s_cap + n_tgt - 2, s_cap + n_tgt - 1]
        q_lim[r] = [0, 0, 0, n_src + 3, n_src + 3]
        if r == 2:
            q_seg[r, 4] = -1  # a padding token of the fed chunk
    k_idx = np.broadcast_to(np.arange(cap, dtype=np.int32), (b, cap))
    return MaskVectors(*(jnp.asarray(x) for x in (q_seg, q_idx, q_lim))), jnp.asarray(k_seg), jnp.asarray(k_idx)


def _qkv(seed, b, tq, tk, dtype):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (b, tq, H, D), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (b, tk, KV, D), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (b, tk, KV, D), jnp.float32).astype(dtype)
    cot = jax.random.normal(ks[3], (b, tq, KV, H // KV, D), jnp.float32)
    return q, k, v, cot


def _compare(qv, k_seg, k_idx, dtype, tol, blocks):
    b, tq = qv.segment.shape
    q, k, v, cot = _qkv(7, b, tq, k_seg.shape[1], dtype)
    mask = visibility_mask(qv, k_seg, k_idx)
    seen = jnp.any(mask, axis=-1)  # rows with no visible key (padding) are defined differently, and unused
    cot = jnp.where(seen[:, :, None, None, None], cot, 0.0)
    assert 0 < int(seen.sum()) < seen.size or bool(seen.all())

    def dense(q, k, v):
        return dense_attention(q, k, v, mask)[0]

    def kernel(q, k, v):
        return flash_local(q, k, v, qv.segment, qv.index, qv.limit, k_seg, k_idx, block_q=blocks[0],
                           block_k=blocks[1], interpret=True)

    @jax.jit
    def out_and_grads(q, k, v):
        res = []
        for f in (dense, kernel):
            out, vjp = jax.vjp(f, q, k, v)
            res.append((jnp.where(seen[:, :, None, None, None], out, 0.0), vjp(cot.astype(out.dtype))))
        return res

    outs, grads = [], []
    for out, g in out_and_grads(q, k, v):
        outs.append(np.asarray(out, np.float32))
        grads.append([np.asarray(x, np.float32) for x in g])
    scale = np.abs(outs[0]).max()
    assert np.abs(outs[1] - outs[0]).max() <= tol * scale
    for name, a, r in zip("qkv", grads[1], grads[0]):
        assert np.abs(a - r).max() <= tol * np.abs(r).max(), f"d{name}"


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_kernel_equals_dense_on_the_packed_dual_view(dtype, tol):
    qv, k_seg, k_idx = packed_view_vectors(0 if dtype == jnp.float32 else 1)
    _compare(qv, k_seg, k_idx, dtype, tol, blocks=(16, 8))  # 48 tokens: 3 query x 6 key blocks, some empty


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_kernel_equals_dense_on_a_decode_cache(dtype, tol):
    qv, k_seg, k_idx = decode_cache_vectors(3)
    _compare(qv, k_seg, k_idx, dtype, tol, blocks=(8, 16))  # 5 queries padded to 8; 40 slots padded to 48


def test_packed_view_has_empty_blocks_the_kernel_skips():
    """The source rows never see target keys and the stream copy never sees the batch copy: whole blocks."""
    qv, k_seg, k_idx = packed_view_vectors(0)
    mask = np.asarray(visibility_mask(qv, k_seg, k_idx))
    blocks = mask.reshape(mask.shape[0], 3, 16, 6, 8).any(axis=(2, 4))
    assert (~blocks).sum() >= mask.shape[0] * 5  # at least 5 of the 18 blocks per row are skipped


def test_attend_dispatch_and_model_equality():
    from proactive_jax.models.qwen import apply_hidden, init_params

    qv, k_seg, k_idx = packed_view_vectors(2)
    q, k, v, _ = _qkv(1, *qv.segment.shape, qv.segment.shape[1], jnp.float32)
    dense = attend("dense", q, k, v, qv, k_seg, k_idx)
    seen = np.asarray(jnp.any(visibility_mask(qv, k_seg, k_idx), -1))[:, :, None, None, None]
    for impl in ("auto", "cudnn"):  # off TPU/GPU auto is dense; cudnn falls back to dense for float32 (logged)
        out = jax.jit(attend, static_argnums=0)(impl, q, k, v, qv, k_seg, k_idx)
        np.testing.assert_allclose(np.where(seen, out, 0), np.where(seen, dense, 0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="model.attention"):
        attend("flash", q, k, v, qv, k_seg, k_idx)
    # the whole decoder with the kernel: hidden states equal on rows that see something
    cfg = tiny_qwen3()
    params = init_params(cfg, 0)
    tokens = jnp.zeros(qv.segment.shape, jnp.int32) + 5
    pos = qv.index % 24
    h_dense = jax.jit(apply_hidden, static_argnums=0)(cfg, params, tokens, pos, qv).hidden
    h_kern = jax.jit(apply_hidden, static_argnums=0)(cfg.replace(attention="pallas"), params, tokens, pos, qv).hidden
    ok = np.asarray(qv.segment >= 0)
    np.testing.assert_allclose(np.asarray(h_kern)[ok], np.asarray(h_dense)[ok], atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
def test_cudnn_equals_dense_on_gpu():  # pragma: no cover - needs a GPU with cuDNN
    if jax.default_backend() != "gpu":
        pytest.skip("no GPU")
    qv, k_seg, k_idx = packed_view_vectors(0)
    q, k, v, _ = _qkv(0, *qv.segment.shape, qv.segment.shape[1], jnp.bfloat16)
    ref = attend("dense", q, k, v, qv, k_seg, k_idx).astype(jnp.float32)
    out = attend("cudnn", q, k, v, qv, k_seg, k_idx).astype(jnp.float32)
    seen = np.asarray(jnp.any(visibility_mask(qv, k_seg, k_idx), -1))[:, :, None, None, None]
    assert np.abs(np.where(seen, out - ref, 0)).max() <= 2e-2 * np.abs(ref).max()
