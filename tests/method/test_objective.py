"""The packed dual view equals two separate passes; token_logprobs equals transformers with a 4-D mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.models.qwen import init_params
from proactive_jax.method.objective import (ObjectiveConfig, batch_view_loss_sums, dual_view_loss_sums, loss_fn,
                                            naive_loss_sums, pack_batch, packed_loss_sums, token_logprobs)
from proactive_jax.data.example import ExampleError, StreamExample
from tests.helpers import tiny_qwen2, tiny_qwen3
from tests.method.util import rel_err, scaled_params
from tests.streaming_util import random_example, random_phi

CONFIGS = {"qwen2": tiny_qwen2(), "qwen3": tiny_qwen3()}
_sums = jax.jit(packed_loss_sums, static_argnums=(0, 1))


@pytest.mark.parametrize("name,obj", [
    ("qwen2", ObjectiveConfig(kl_topk=20)),
    ("qwen3", ObjectiveConfig(kl_topk=5, alpha=1.0, target_offset="contiguous", teacher_stop_grad=False)),
])
def test_packed_equals_naive_losses_and_grads(name, obj):
    cfg = CONFIGS[name]
    params = scaled_params(cfg, 1)
    rng = np.random.default_rng(11)
    batch = pack_batch([random_example(rng) for _ in range(5)], (24, 12), batch_size=6)
    key = jax.random.PRNGKey(5)

    def total(fn):
        def f(p):
            sums = fn(cfg, obj, p, batch, key)
            return obj.w_batch * sums["batch"] + obj.w_mslm * sums["mslm"] + obj.kl_lambda * sums["kl"], sums
        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (tp, sp), gp = total(packed_loss_sums)(params)
    (tn, sn), gn = total(naive_loss_sums)(params)
    for term in ("batch", "mslm", "kl"):
        assert float(sn[term]) > 0
        assert rel_err(sp[term], sn[term]) < 1e-5, term
    assert float(sn["kl"]) > 1e-3, "the KL term must be non-trivial for this comparison to mean something"
    for a, b in zip(jax.tree_util.tree_leaves(gp), jax.tree_util.tree_leaves(gn)):
        assert rel_err(a, b) < 1e-5


def test_full_schedule_makes_views_equal_and_kl_zero():
    """In the packed dual view itself (not the batch-view shortcut), the full schedule's stream copy is the batch
    copy: mslm == batch, kl == 0."""
    cfg = CONFIGS["qwen3"]
    params = scaled_params(cfg, 2)
    rng = np.random.default_rng(3)
    batch = pack_batch([random_example(rng) for _ in range(4)], (24, 12), batch_size=5)
    obj = ObjectiveConfig(schedule="full")
    sums = jax.jit(dual_view_loss_sums, static_argnums=(0, 1))(cfg, obj, params, batch, jax.random.PRNGKey(0))
    assert abs(float(sums["batch"]) - float(sums["mslm"])) < 1e-5 * float(sums["batch"])
    assert abs(float(sums["kl"])) < 1e-5 * float(sums["batch"])
    total, aux = jax.jit(loss_fn, static_argnums=(0, 1))(cfg, obj, params, batch, jax.random.PRNGKey(0))
    assert np.isfinite(float(total))
    assert abs(float(aux["batch"]) - float(aux["mslm"])) < 1e-5 * float(aux["batch"])
    assert abs(float(aux["kl"])) < 1e-5
    assert int(aux["tokens"]) == sum(int(x) for x in batch["target_len"])


@pytest.mark.parametrize("name,obj,embeds", [
    ("qwen2", ObjectiveConfig(schedule="full", kl_topk=5, kl_lambda=0.3), False),
    # the old KL variant (no student renormalisation) is -log Z_k > 0 on identical views: kept exactly
    ("qwen3", ObjectiveConfig(schedule="full", kl_topk=5, kl_lambda=0.5, kl_student_renorm=False,
                              teacher_stop_grad=False, target_offset="contiguous"), False),
    ("qwen3", ObjectiveConfig(schedule="full", kl_topk=5, kl_lambda=0.5, kl_student_renorm=False, logit_chunk=5),
     False),
    ("qwen2", ObjectiveConfig(schedule="full", kl_topk=5, w_mslm=0.0, kl_lambda=0.0), True),  # audio-style embeds
])
def test_batch_view_equals_dual_view_under_the_full_schedule(name, obj, embeds):
    """``schedule="full"`` runs ``[source | target]`` once (packed_loss_sums' shortcut): its sums and gradients
    equal the packed dual view's (fp32, 1e-5), with padding rows, chunked logits and source embeddings."""
    cfg = CONFIGS[name]
    params = scaled_params(cfg, 4)
    rng = np.random.default_rng(21)
    batch = pack_batch([random_example(rng) for _ in range(5)], (24, 12), batch_size=7)  # 2 padding rows
    if embeds:
        batch["source_embeds"] = rng.normal(size=(7, 24, cfg.hidden_size)).astype(np.float32)
    key = jax.random.PRNGKey(3)

    def total(fn):
        def f(p):
            sums = fn(cfg, obj, p, batch, key)
            return obj.w_batch * sums["batch"] + obj.w_mslm * sums["mslm"] + obj.kl_lambda * sums["kl"] + \
                0.01 * sums["kl"], sums  # kl enters the gradient even where kl_lambda is 0
        return jax.jit(jax.value_and_grad(f, has_aux=True))

    (tb, sb), gb = total(batch_view_loss_sums)(params)
    (td, sd), gd = total(dual_view_loss_sums)(params)
    (tp, _), _ = total(packed_loss_sums)(params)
    assert float(tp) == float(tb), "packed_loss_sums must take the batch-view path for schedule='full'"
    assert float(sd["batch"]) > 0
    for term in ("batch", "mslm", "kl"):
        assert abs(float(sb[term]) - float(sd[term])) <= 1e-5 * max(abs(float(sd[term])), float(sd["batch"])), term
    if not obj.kl_student_renorm:
        assert float(sd["kl"]) > 1e-3  # a non-trivial term, carried exactly
    for a, b in zip(jax.tree_util.tree_leaves(gb), jax.tree_util.tree_leaves(gd)):
        assert rel_err(a, b) < 1e-5
    with pytest.raises(ValueError, match="schedule='full'"):
        batch_view_loss_sums(cfg, ObjectiveConfig(), params, batch, key)


def test_token_average_is_global_under_padding():
    """Sums over the padded batch divided by the real token count == per-example sums pooled."""
    cfg = CONFIGS["qwen2"]
    params = scaled_params(cfg, 4)
    rng = np.random.default_rng(8)
    exs = [random_example(rng) for _ in range(3)]
    obj = ObjectiveConfig(schedule="full")
    key = jax.random.PRNGKey(0)
    together = _sums(cfg, obj, params, pack_batch(exs, (24, 12), batch_size=5), key)
    apart = [_sums(cfg, obj, params, pack_batch([e], (24, 12), batch_size=5), key) for e in exs]
    assert rel_err(together["batch"], sum(a["batch"] for a in apart)) < 1e-5


def test_token_logprobs_full_equals_loss_rows():
    cfg = CONFIGS["qwen3"]
    params = scaled_params(cfg, 6)
    rng = np.random.default_rng(1)
    ex = random_example(rng)
    lp = token_logprobs(cfg, params, ex)
    assert lp.shape == (ex.L,) and np.all(lp <= 0)
    sums = _sums(cfg, ObjectiveConfig(schedule="full"), params, pack_batch([ex], (24, 12), batch_size=5),
                 jax.random.PRNGKey(0))
    np.testing.assert_allclose(-lp.sum(), float(sums["batch"]), rtol=1e-5)
    # reading less changes the scores of this random model
    lp0 = token_logprobs(cfg, params, ex, phi=np.zeros(ex.L, np.int32))
    assert not np.allclose(lp0, lp)


def test_bad_inputs():
    cfg = CONFIGS["qwen3"]
    params = init_params(cfg, 0)
    ex = StreamExample(prompt=[1], units=[[2], [3]], end=[4], header=[5], target=[6, 7])
    with pytest.raises(ExampleError, match="non-decreasing"):
        token_logprobs(cfg, params, ex, phi=[3, 1])
    with pytest.raises(ExampleError, match="do not fit bucket"):
        pack_batch([ex], (3, 8))
    with pytest.raises(ExampleError, match="empty header"):
        pack_batch([StreamExample(prompt=[1], units=[[2]], end=[4], header=[], target=[6])], (8, 8))
    with pytest.raises(ValueError, match="schedule"):
        ObjectiveConfig(schedule="random")


# ---------------------------------------------------------------------------------------------
# token_logprobs against transformers (PyTorch) with GPE position ids and an explicit 4-D mask
# ---------------------------------------------------------------------------------------------

def _hf_model(kind, tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from proactive_jax.models.hf import load_pretrained

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256)
    if kind == "qwen2":
        hc = transformers.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common)
        model = transformers.Qwen2ForCausalLM(hc)
    else:
        hc = transformers.Qwen3Config(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False, **common)
        model = transformers.Qwen3ForCausalLM(hc)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.eval()
    d = tmp_path_factory.mktemp(f"hf_{kind}")
    model.save_pretrained(d)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    cfg, params = load_pretrained(d)
    return model, cfg, params


def _reference_logprobs(model, ex: StreamExample, phi):
    """Independent reference: one sequence [source | header+target], GPE positions, additive 4-D mask."""
    import torch
    S, H, L = ex.S, len(ex.header), ex.L
    V = [len(ex.prompt) + sum(len(u) for u in ex.units[:min(n, ex.M)]) + (len(ex.end) if n == ex.M + 1 else 0)
         for n in range(ex.M + 2)]
    seq = list(ex.source) + list(ex.header) + list(ex.target)
    n = len(seq)
    allowed = np.zeros((n, n), bool)
    for q in range(n):
        for k in range(n):
            if q < S:
                allowed[q, k] = k <= q
            elif k >= S:
                allowed[q, k] = k <= q
            else:
                r = q - S
                j = 1 if r < H else min(r - H + 2, L)
                allowed[q, k] = k < V[phi[j - 1]]
    mask = torch.where(torch.tensor(allowed), 0.0, torch.finfo(torch.float32).min)[None, None]
    pos = torch.tensor(list(range(S)) + list(range(H + L)))[None]
    with torch.no_grad():
        logits = model(torch.tensor(seq)[None], attention_mask=mask, position_ids=pos).logits[0].double()
    logp = torch.log_softmax(logits, -1).numpy()
    return np.array([logp[S + H + j - 2, ex.target[j - 1]] for j in range(1, L + 1)])


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_token_logprobs_match_transformers(kind, tmp_path_factory):
    from proactive_jax.method.streaming import wait_k_schedule
    model, cfg, params = _hf_model(kind, tmp_path_factory)
    rng = np.random.default_rng(21)
    checked = 0
    for _ in range(3):
        ex = random_example(rng, max_target=6)
        schedules = [None, np.asarray(wait_k_schedule(ex.M, ex.L, 1)), np.asarray(wait_k_schedule(ex.M, ex.L, 2)),
                     random_phi(rng, ex), random_phi(rng, ex)]
        for phi in schedules:
            ours = token_logprobs(cfg, params, ex, phi=phi)
            ref = _reference_logprobs(model, ex, np.full(ex.L, ex.M + 1) if phi is None else phi)
            np.testing.assert_allclose(ours, ref, atol=2e-4 * max(1.0, np.abs(ref).max()))
            checked += 1
    assert checked == 15


# ---------------------------------------------------------------------------------------------
# The top-k KL for k < |V|: a true divergence by default, the earlier variant as an option
# ---------------------------------------------------------------------------------------------

def _np_topk_kl(t, s, k, renorm_student):
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    idx = np.argsort(-t, axis=-1)[..., :k]
    lt = np.take_along_axis(t, idx, -1)
    pt = np.exp(lt - lt.max(-1, keepdims=True))
    pt /= pt.sum(-1, keepdims=True)
    ls = s - s.max(-1, keepdims=True)
    ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
    ls = np.take_along_axis(ls, idx, -1)
    if renorm_student:
        ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
    return float(np.sum(pt * (np.log(pt) - ls)))


@pytest.mark.parametrize("renorm", [True, False])
def test_topk_kl_for_k_below_vocab(renorm):
    from proactive_jax.method.objective import topk_kl_sum
    rng = np.random.default_rng(0)
    V, k = 97, 20
    t = jnp.asarray(rng.normal(0, 2.0, (3, 5, V)), jnp.float32)
    s = jnp.asarray(rng.normal(0, 2.0, (3, 5, V)), jnp.float32)
    mask = jnp.ones((3, 5), bool)
    kl = lambda a, b: topk_kl_sum(a, b, mask, k, True, renorm_student=renorm)
    np.testing.assert_allclose(float(kl(t, s)), _np_topk_kl(t, s, k, renorm), rtol=1e-4)
    same, g = jax.value_and_grad(lambda x: kl(t, x))(t)
    gnorm = float(jnp.linalg.norm(g))
    if renorm:  # identical views: zero divergence, zero gradient
        assert abs(float(same)) < 1e-5 and gnorm < 1e-5
        assert float(kl(t, s)) > 0.1
    else:  # the earlier variant: -log Z_k > 0 and a gradient pushing the tail mass onto the top-k
        lz = jax.nn.logsumexp(jax.lax.top_k(t, k)[0], -1) - jax.nn.logsumexp(t, -1)
        np.testing.assert_allclose(float(same), float(-jnp.sum(lz)), rtol=1e-5)
        assert float(same) > 0.1 and gnorm > 0.1


def test_objective_kl_option_is_plumbed():
    cfg = CONFIGS["qwen3"]
    params = scaled_params(cfg, 2)
    rng = np.random.default_rng(3)
    batch = pack_batch([random_example(rng) for _ in range(3)], (24, 12), batch_size=4)
    key = jax.random.PRNGKey(0)
    true = _sums(cfg, ObjectiveConfig(schedule="full", kl_topk=10), params, batch, key)
    old = _sums(cfg, ObjectiveConfig(schedule="full", kl_topk=10, kl_student_renorm=False), params, batch, key)
    assert abs(float(true["kl"])) < 1e-4 and float(old["kl"]) > 1e-2


# ---------------------------------------------------------------------------------------------
# the vocabulary-chunked loss (objective.logit_chunk) and the top-k helper
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,chunk,obj", [
    # tied LM head (its gradient flows through the lookup and every chunk), gradient through the teacher too;
    # 12 target positions -> chunks 5, 5, 2 (+3 padded positions)
    ("qwen2", 5, dict(kl_topk=20, teacher_stop_grad=False)),
])
def test_chunked_loss_equals_unchunked_values_and_grads(name, chunk, obj):
    import dataclasses

    cfg = CONFIGS[name]
    params = scaled_params(cfg, 3)
    rng = np.random.default_rng(21)
    batch = pack_batch([random_example(rng) for _ in range(4)], (24, 12), batch_size=6)  # 2 padding rows
    key = jax.random.PRNGKey(9)
    base = ObjectiveConfig(**obj)
    chunked = dataclasses.replace(base, logit_chunk=chunk)

    def grads(o):
        def f(p):
            sums = packed_loss_sums(cfg, o, p, batch, key)
            return o.w_batch * sums["batch"] + o.w_mslm * sums["mslm"] + o.kl_lambda * sums["kl"], sums
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (t0, s0), g0 = grads(base)
    (t1, s1), g1 = grads(chunked)
    assert float(s0["kl"]) > 1e-3
    for term in ("batch", "mslm", "kl"):
        assert rel_err(s1[term], s0[term]) < 1e-5, term
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        assert rel_err(a, b) < 1e-5


def test_chunked_loss_keeps_one_chunk_of_logits_live():
    """The compiled gradient's temporaries shrink with the chunk (the full [B, 2T, V] logits never exist)."""
    cfg = tiny_qwen3(vocab_size=4096, num_hidden_layers=1)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(2)
    batch = pack_batch([random_example(rng) for _ in range(8)], (24, 32), batch_size=8)

    def temp_bytes(chunk):
        o = ObjectiveConfig(kl_topk=8, logit_chunk=chunk)
        f = jax.jit(jax.grad(lambda p: packed_loss_sums(cfg, o, p, batch, jax.random.PRNGKey(0))["mslm"]))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    full_logits = 8 * 2 * 32 * 4096 * 4  # one [B, 2T, V] float32 tensor
    unchunked, chunked = temp_bytes(0), temp_bytes(4)
    assert unchunked > full_logits
    assert chunked < unchunked / 3 and chunked < full_logits


def test_top_k_helper_is_exact_off_tpu_and_approx_max_k_has_recall():
    from proactive_jax.method.objective import TOPK_RECALL, top_k

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5000), jnp.float32)
    v, i = jax.jit(lambda a: top_k(a, 100))(x)
    ev, ei = jax.lax.top_k(x, 100)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ei))
    np.testing.assert_array_equal(np.asarray(v), np.asarray(ev))
    # the TPU branch: approx_max_k's recall of the exact top-k, measured here (exact on CPU, approximate on TPU)
    av, ai = jax.jit(lambda a: jax.lax.approx_max_k(a, 100, recall_target=TOPK_RECALL))(x)
    recall = np.mean([len(set(np.asarray(ai[r])) & set(np.asarray(ei[r]))) / 100 for r in range(6)])
    assert recall >= TOPK_RECALL
    g = jax.grad(lambda a: jnp.sum(top_k(a, 3)[0] ** 2))(x)  # differentiable through the platform switch
    assert int(jnp.sum(g != 0)) == 6 * 3
