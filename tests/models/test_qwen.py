"""Model parity with transformers (PyTorch CPU, float32) on tiny random checkpoints, compute options,
and full-size parameter counts by ``jax.eval_shape``.

Each tiny checkpoint is built once per session: random ``transformers`` config -> torch model with
every weight perturbed (norms and biases included) -> ``save_pretrained`` -> :func:`load_pretrained`.
Run with ``-s`` to see the per-config parity figures (``PARITY ...`` lines).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proactive_jax.models.config import load_hf_config
from proactive_jax.models.hf import load_pretrained
from proactive_jax.models.qwen import abstract_params, forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
BATCH, LENGTH = 2, 12
REL_TOL = 1e-4

BASE = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
            bos_token_id=1, eos_token_id=2)

# name -> (model_type, transformers config overrides); rope given in the v5 `rope_parameters` layout
CASES = {
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3_qknorm_untied_hd16": ("qwen3", dict(tie_word_embeddings=False, head_dim=16)),
    "qwen3_one_kv_head": ("qwen3", dict(num_key_value_heads=1, head_dim=12, tie_word_embeddings=True)),
    "qwen3_attention_bias": ("qwen3", dict(attention_bias=True, head_dim=8, tie_word_embeddings=False)),
    "qwen2_yarn": ("qwen2", dict(tie_word_embeddings=True, rope_parameters=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=64, rope_theta=10000.0))),
    "qwen3_linear": ("qwen3", dict(tie_word_embeddings=False, head_dim=16, rope_parameters=dict(
        rope_type="linear", factor=2.0, rope_theta=50000.0))),
    "qwen2_llama3": ("qwen2", dict(tie_word_embeddings=False, rope_parameters=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64, rope_theta=10000.0))),
}


# ---------------------------------------------------------------------------------------------
# helpers (also used by test_hf.py)
# ---------------------------------------------------------------------------------------------

def hf_config(model_type: str, **overrides):
    cls = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[model_type]
    return cls(**{**BASE, **overrides})


def perturb_(model, seed: int) -> None:
    """Random weights everywhere: matrices ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.2), biases ~ N(0, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / np.sqrt(p.shape[-1]))


def build_torch_model(model_type: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(model_type, **overrides),
                                                          attn_implementation="eager")
    perturb_(model, seed)
    return model.eval()


def torch_logits(model, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    kw = {}
    if positions is not None:
        # an explicit all-ones mask: without it transformers reads non-contiguous position ids as packed
        # sequences and builds a block-diagonal mask
        kw = dict(position_ids=torch.as_tensor(np.array(positions), dtype=torch.long),
                  attention_mask=torch.ones_like(ids_t))
    with torch.no_grad():
        return model(ids_t, use_cache=False, **kw).logits.float().numpy()


def make_inputs(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (BATCH, LENGTH))
    # increasing, non-contiguous, different per row, beyond the yarn/llama3 original context of 64
    positions = np.stack([np.sort(rng.choice(300, LENGTH, replace=False)) for _ in range(BATCH)])
    return ids, positions


def diff_stats(ours, ref) -> tuple[float, float]:
    d = float(np.abs(np.asarray(ours) - ref).max())
    return d, d / float(np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# fixtures: one torch model + checkpoint per case, per session
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """``name -> dict(dir, ids, positions, ref_default, ref_positions)``, built lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            model_type, overrides = CASES[name]
            model = build_torch_model(model_type, seed=len(cache), **overrides)
            d = tmp_path_factory.mktemp(name)
            model.save_pretrained(d)
            ids, pos = make_inputs(BASE["vocab_size"], seed=len(cache))
            cache[name] = dict(dir=d, ids=ids, positions=pos, ref_default=torch_logits(model, ids),
                               ref_positions=torch_logits(model, ids, pos))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_transformers(name, checkpoints):
    ck = checkpoints(name)
    config, params = load_pretrained(ck["dir"])
    model_type, overrides = CASES[name]
    assert config.model_type == model_type
    assert config.tie_word_embeddings == overrides.get("tie_word_embeddings", False)
    assert ("lm_head" in params) != config.tie_word_embeddings
    if "rope_parameters" in overrides:
        assert config.rope_scaling_dict["rope_type"] == overrides["rope_parameters"]["rope_type"]
    for label, positions, ref in (("default positions", None, ck["ref_default"]),
                                  ("explicit positions", ck["positions"], ck["ref_positions"])):
        ours = forward(config, params, ck["ids"], positions)
        d, rel = diff_stats(ours, ref)
        print(f"PARITY {name} [{label}]: max|diff| {d:.3g}, max|logit| {np.abs(ref).max():.3g}, relative {rel:.3g}")
        assert rel <= REL_TOL, f"{name} {label}: max|diff| {d} = {rel:.3g} of max|logit|"
    # the explicit positions really differ from the default ones
    assert np.abs(ck["ref_positions"] - ck["ref_default"]).max() > 1e-3


def test_bf16_compute_close(checkpoints):
    ck = checkpoints("qwen3_qknorm_untied_hd16")
    config, params = load_pretrained(ck["dir"], dtype="bfloat16")
    assert config.dtype == "bfloat16"
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))  # fp32 master weights
    ours = np.asarray(forward(config, params, ck["ids"]))
    d, rel = diff_stats(ours, ck["ref_default"])
    print(f"PARITY bf16 compute qwen3: max|diff| {d:.3g}, relative {rel:.3g}")
    assert np.isfinite(ours).all()
    assert 0 < rel <= 5e-2
    agree = (ours.argmax(-1) == ck["ref_default"].argmax(-1)).mean()
    assert agree >= 0.9


@pytest.mark.parametrize("name", ["qwen2_bias_tied", "qwen3_qknorm_untied_hd16"])
def test_scan_unrolled_and_remat_match(name, checkpoints):
    ck = checkpoints(name)
    config, params = load_pretrained(ck["dir"])
    base = np.asarray(forward(config, params, ck["ids"], ck["positions"]))
    for variant in (dict(scan_layers=False), dict(remat=True)):
        other = np.asarray(forward(config.replace(**variant), params, ck["ids"], ck["positions"]))
        d = float(np.abs(other - base).max())
        print(f"VARIANT {name} {variant}: max|diff| vs scan {d:.3g}")
        # same ops, same order: expect bit-identical; allow last-ulp noise from a different fusion
        assert d <= 1e-6 * float(np.abs(base).max()), variant


def test_remat_policies_give_the_same_gradients():
    """model.remat only changes what the backward pass recomputes, never the gradients."""
    from proactive_jax.models.qwen import init_params
    from tests.helpers import tiny_qwen3

    cfg = tiny_qwen3(num_hidden_layers=1)
    params = init_params(cfg, 0)
    ids = np.arange(24, dtype=np.int32).reshape(2, 12) % cfg.vocab_size

    def grads(c):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.tanh(apply_logits_causal(c, p, ids)))))(params)

    ref = jax.tree.leaves(grads(cfg))
    for policy in ("save_attention_out",):  # the policy of ours (checkpoint_name); dots_* are jax's own
        got = jax.tree.leaves(grads(cfg.replace(remat=policy)))
        for a, b in zip(got, ref):  # recomputation may fuse differently: float32 rounding only
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * float(jnp.max(jnp.abs(b))), policy
    with pytest.raises(ValueError, match="remat"):
        cfg.replace(remat="everything")


def apply_logits_causal(cfg, params, ids):
    from proactive_jax.models.attention import causal_vectors
    from proactive_jax.models.qwen import apply_logits

    b, t = ids.shape
    return apply_logits(cfg, params, ids, jnp.broadcast_to(jnp.arange(t), (b, t)), causal_vectors(b, t))


# ---------------------------------------------------------------------------------------------
# full-size configs: parameter counts without allocating
# ---------------------------------------------------------------------------------------------

def expected_count(hf: dict) -> int:
    """Parameter count from the architecture formula, written out from the HF config keys."""
    d, f, n_layers, v = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"], hf["vocab_size"]
    h, kv = hf["num_attention_heads"], hf["num_key_value_heads"]
    hd = hf.get("head_dim") or d // h
    qwen3 = hf["model_type"] == "qwen3"
    q, k, vproj, o = d * h * hd, d * kv * hd, d * kv * hd, h * hd * d
    bias = (h * hd + 2 * kv * hd) if not qwen3 else (h * hd + 2 * kv * hd + d if hf.get("attention_bias") else 0)
    qk_norm = 2 * hd if qwen3 else 0
    mlp = 3 * d * f
    norms = 2 * d
    per_layer = q + k + vproj + o + bias + qk_norm + mlp + norms
    embed = v * d
    head = 0 if hf["tie_word_embeddings"] else v * d
    return n_layers * per_layer + embed + d + head


@pytest.mark.parametrize("fname,published_billions", [("qwen2.5-3b.json", 3.09), ("qwen3-4b.json", 4.02)])
def test_full_size_param_count(fname, published_billions):
    path = REPO / "configs" / fname
    hf = json.loads(path.read_text())
    config = load_hf_config(path)
    shapes = abstract_params(config)  # jax.eval_shape: ShapeDtypeStructs only
    leaves = jax.tree_util.tree_leaves(shapes)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    n = sum(int(np.prod(x.shape)) for x in leaves)
    print(f"PARAMS {fname}: {n:,}")
    assert n == expected_count(hf) == config.num_params()
    assert round(n / 1e9, 2) == published_billions
    # and transformers agrees (built on the meta device: no memory)
    with torch.device("meta"):
        tm = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf))
    assert sum(p.numel() for p in tm.parameters()) == n
