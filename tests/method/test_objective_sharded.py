"""The chunked loss with the LM head split over the vocabulary (8 fake CPU devices) equals the unchunked loss
under the same mesh (values and gradients, fp32 1e-5)."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from proactive_jax.method.objective import ObjectiveConfig, pack_batch, packed_loss_sums
from proactive_jax.training.mesh import param_shardings
from tests.helpers import tiny_qwen2, tiny_qwen3
from tests.method.util import rel_err, scaled_params
from tests.streaming_util import random_example


def _value_and_grads(cfg, obj, params, batch, key, mesh=None):
    """Weighted loss sums and their gradients; under ``mesh``: FSDP params, rows over the mesh, traced with
    the mesh as the abstract mesh (as training.step does)."""
    def f(p, bt):
        sums = packed_loss_sums(cfg, obj, p, bt, key)
        return obj.w_batch * sums["batch"] + obj.w_mslm * sums["mslm"] + obj.kl_lambda * sums["kl"], sums

    vg = jax.value_and_grad(f, has_aux=True)
    if mesh is None:
        return jax.jit(vg)(params, batch), None

    def traced(p, bt):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return vg(p, bt)

    shard = (param_shardings(params, mesh), NamedSharding(mesh, P(("data", "fsdp"))))
    fn = jax.jit(traced, in_shardings=shard)
    return fn(params, batch), str(jax.make_jaxpr(traced)(params, batch))


@pytest.mark.parametrize("name,mesh_shape,chunk,obj", [
    # tied head, gradient through the teacher too; fsdp=8: 12 vocabulary rows per shard < k=20
    ("qwen2", (1, 8), 5, dict(kl_topk=20, teacher_stop_grad=False)),
    # untied head, the earlier KL variant (student's full-vocabulary log-softmax), data x fsdp mesh
    ("qwen3", (2, 4), 4, dict(kl_topk=30, kl_student_renorm=False, target_offset="contiguous")),
    # batch-mode (schedule full): one view, one set of chunk logits for both terms; KL = -log Z_k > 0 here
    ("qwen3", (2, 4), 4, dict(schedule="full", kl_topk=30, kl_student_renorm=False, kl_lambda=0.5)),
])
def test_vocab_sharded_chunked_loss_equals_unchunked(name, mesh_shape, chunk, obj):
    cfg = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3}[name](vocab_size=96)
    params = scaled_params(cfg, 4)
    rng = np.random.default_rng(31)
    batch = pack_batch([random_example(rng, vocab=96) for _ in range(6)], (24, 12), batch_size=8)  # 2 padding rows
    key = jax.random.PRNGKey(2)
    base = ObjectiveConfig(**obj)
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(mesh_shape), ("data", "fsdp"))
    # the reference runs under the same mesh: XLA's partitioned model alone moves the gradients by ~3e-5
    ((t0, s0), g0), ref_jaxpr = _value_and_grads(cfg, base, params, batch, key, mesh)
    assert "all_to_all" not in ref_jaxpr
    ((t1, s1), g1), jaxpr = _value_and_grads(cfg, dataclasses.replace(base, logit_chunk=chunk, vocab_sharded_head=True), params, batch, key,
                                             mesh)
    assert "shard_map" in jaxpr and "all_to_all" in jaxpr  # the vocabulary-split path ran
    assert float(s0["kl"]) > 1e-3
    for term in ("batch", "mslm", "kl"):
        assert rel_err(s1[term], s0[term]) < 1e-5, term
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree_util.tree_leaves(g0)):
        assert rel_err(a, b) < 1e-5, jax.tree_util.keystr(path)
