"""The train step: sharded loss and gradients equal one device, accumulation, optimizer and schedules."""
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from proactive_jax.method.objective import ObjectiveConfig, pack_batch
from proactive_jax.models.qwen import abstract_params, init_params
from proactive_jax.training import mesh as TM, run_config as TR, step as TS
from tests.streaming_util import random_example
from tests.training.util import SMALL, max_diff as _max_diff


def _loss_grads(mesh, k, params, batch, key, obj=ObjectiveConfig(kl_topk=8), hlo=False):
    """``(loss, terms, grads)``; under ``mesh`` traced as the train step does (the mesh as the abstract mesh, so
    the activations' row constraints apply); ``hlo``: also the compiled per-device HLO text."""
    if mesh is None:
        dev = jax.devices()[0]
        f = jax.jit(lambda p, b, kk: TS.loss_and_grads(SMALL, obj, p, b, kk, accum_steps=k))
        put = lambda t: jax.device_put(t, dev)  # noqa: E731
        return f(put(params), put(batch), key)
    psh = TM.param_shardings(abstract_params(SMALL), mesh)

    def traced(p, b, kk):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return TS.loss_and_grads(SMALL, obj, p, b, kk, accum_steps=k, mesh=mesh, grad_shardings=psh)

    args = (TM.place(params, psh), TM.place(batch, TM.batch_sharding(mesh)), key)
    compiled = jax.jit(traced, in_shardings=(psh, TM.batch_sharding(mesh), TM.replicated(mesh))).lower(*args).compile()
    return (compiled(*args), compiled.as_text()) if hlo else compiled(*args)


def test_sharded_loss_and_grads_equal_single_device_and_accumulation():
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, init_params(SMALL, 3))  # non-trivial KL
    rng = np.random.default_rng(0)
    batch = pack_batch([random_example(rng, vocab=120) for _ in range(14)], (24, 12), batch_size=16)
    key = jax.random.PRNGKey(7)
    devs = np.asarray(jax.devices())
    ref_loss, ref_terms, ref_g = _loss_grads(None, 1, params, batch, key)
    assert float(ref_terms["kl"]) > 1e-3 and float(ref_terms["tokens"]) > 20
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_g))
    cases = {"dp(8,1)": (Mesh(devs.reshape(8, 1), TM.MESH_AXES), 1),
             "dp x fsdp(2,4)": (Mesh(devs.reshape(2, 4), TM.MESH_AXES), 1),
             "accum k=2 on (2,4)": (Mesh(devs.reshape(2, 4), TM.MESH_AXES), 2)}
    for name, (mesh, k) in cases.items():
        loss, terms, g = _loss_grads(mesh, k, params, batch, key)
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss)), name
        for t in ("batch", "mslm", "kl"):
            assert abs(float(terms[t]) - float(ref_terms[t])) <= 1e-5 * max(abs(float(ref_terms[t])), 1e-3), (name, t)
        assert _max_diff(g, ref_g) <= 1e-5 * scale, name
        if "fsdp" in name:  # FSDP really shards: the embedding's hidden axis is split over the 4 fsdp devices
            emb = g["embed_tokens"]["embedding"]
            assert emb.addressable_shards[0].data.shape == (128, 32 // 4)


def test_sharded_chunked_loss_keeps_rows_sharded():
    """On a (2, 4) mesh no per-device buffer of the compiled loss and gradients holds all 24 rows of the batch
    (3 per device): activations, the chunked loss's logits and its top-k stay data parallel (before the row
    constraints XLA followed the FSDP weights and all-gathered e.g. the [rows, chunk, vocab] logits for the
    top-k); values and gradients still equal one device."""
    params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, init_params(SMALL, 3))
    rng = np.random.default_rng(1)
    batch = pack_batch([random_example(rng, vocab=120) for _ in range(21)], (24, 12), batch_size=24)
    key, obj = jax.random.PRNGKey(5), ObjectiveConfig(kl_topk=8, logit_chunk=5)
    ref_loss, ref_terms, ref_g = _loss_grads(None, 1, params, batch, key, obj)
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), TM.MESH_AXES)
    (loss, terms, g), text = _loss_grads(mesh, 1, params, batch, key, obj, hlo=True)
    full = sorted({m.group(0) for m in re.finditer(r"\b(?:f32|bf16|s32)\[24,[\d,]+\]", text)})
    assert not full, f"per-device buffers with every row of the batch: {full}"
    assert re.search(r"\bf32\[3,", text)  # the rows are there, 3 per device
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert float(ref_terms["kl"]) > 1e-3
    for t in ("batch", "mslm", "kl"):
        assert abs(float(terms[t]) - float(ref_terms[t])) <= 1e-5 * max(abs(float(ref_terms[t])), 1e-3), t
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(ref_g))
    assert _max_diff(g, ref_g) <= 1e-5 * scale


def test_weight_decay_mask_and_schedules():
    ab = abstract_params(SMALL)
    mask = TS.decay_mask(ab)
    assert mask["layers"]["mlp"]["up_proj"]["kernel"] and mask["embed_tokens"]["embedding"]
    assert not mask["layers"]["input_layernorm"]["weight"] and not mask["norm"]["weight"]
    assert not mask["layers"]["self_attn"]["q_norm"]["weight"]
    b = abstract_params(SMALL.replace(qkv_bias=True))
    assert not TS.decay_mask(b)["layers"]["self_attn"]["q_proj"]["bias"]
    sched = TS.make_schedule(TR.OptimSection(lr=1.0, warmup_steps=10, end_lr_ratio=0.1), 110)
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6 and abs(float(sched(110)) - 0.1) < 1e-6
    lin = TS.make_schedule(TR.OptimSection(lr=1.0, warmup_steps=0, schedule="linear"), 100)
    assert abs(float(lin(50)) - 0.5) < 1e-6
