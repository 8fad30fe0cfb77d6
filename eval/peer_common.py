"""Shared pieces of the peer benchmarks (eval/bench_peer_decode.py, eval/bench_peer_train.py).

Random Qwen2 weights built with ``transformers``, saved with its ``save_pretrained`` and loaded into ours with
``proactive_jax.load_pretrained`` (so both sides run exactly the same tensors), the machine description, the load
average, and a measured fp32 / bf16 matmul rate (the "peak" a CPU MFU divides by). Heavy imports stay inside the
functions: the scripts choose the JAX platform before jax is imported.
"""

from __future__ import annotations

import os
import platform
import time

# layer shapes of the Qwen2.5 family (hidden, intermediate, heads, kv heads, layers, vocab); all tie embeddings
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2, vocab_size=512),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                 num_hidden_layers=24, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                 num_hidden_layers=28, vocab_size=151936),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
               num_hidden_layers=36, vocab_size=151936),
}


def shape_dict(shape: str, layers: int | None = None, vocab: int | None = None) -> dict:
    d = dict(SHAPES[shape])
    if layers:
        d["num_hidden_layers"] = int(layers)
    if vocab:
        d["vocab_size"] = int(vocab)
    return d


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_weights(shape: dict, out_dir: str, *, seed: int = 0, logit_scale: float = 1.0, device: str = "cpu",
                  dtype: str = "float32", jax_dtype: str | None = None):
    """A random Qwen2ForCausalLM of ``shape`` (transformers' init, plus random biases and norm weights so that
    every tensor matters), final norm scaled by ``logit_scale`` (peaked logits: no argmax near-ties, entropy
    spread), saved with ``save_pretrained`` into ``out_dir`` and loaded back with ours.

    Returns ``(torch_model in eval mode on device, our config, our params)``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from proactive_jax import load_pretrained

    cfg = Qwen2Config(**shape, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, use_sliding_window=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
            elif "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
        model.model.norm.weight.mul_(logit_scale)
    model = model.to(torch_dtype(dtype)).eval()
    model.save_pretrained(out_dir)
    our_cfg, params = load_pretrained(out_dir, jax_dtype or dtype)
    return model, our_cfg, params


def machine(device: str = "cpu") -> str:
    import jax
    import torch

    d = jax.devices()[0]
    s = (f"{platform.machine()} {platform.processor() or ''} {platform.system()} {platform.release()}, "
         f"{os.cpu_count()} CPUs (torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY "
         f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), jax {jax.__version__} on "
         f"{d.platform}:{getattr(d, 'device_kind', '')}, torch {torch.__version__}")
    if device == "gpu" and torch.cuda.is_available():
        s += f", torch on {torch.cuda.get_device_name(0)}"
    return s


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def matmul_rate(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted n x n x n matmul on jax's default device (the best of ``repeats``)."""
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest" if dtype == "float32" else None))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def median(xs):
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def stacked_vs_separate(layers: int, d: int, f: int, tokens, grad: bool = False, repeats: int = 5):
    """Median ms of ``layers`` SwiGLU MLPs (jax) on t tokens, layer weights stacked ``[layers, ...]`` and run by
    ``lax.scan`` (our decoder's layout) vs one array per layer; forward, or the gradient w.r.t. the weights.
    Returns ``{t: (stacked_ms, separate_ms, model_gflop)}``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    w = tuple(jnp.asarray(rng.normal(0, 0.02, s).astype(np.float32)) for s in ((layers, d, f), (layers, d, f),
                                                                               (layers, f, d)))
    sep = [tuple(x[i] + 0 for x in w) for i in range(layers)]
    mlp = lambda x, g, u, dn: x + (jax.nn.silu(x @ g) * (x @ u)) @ dn  # noqa: E731

    def run_stacked(ws, x):
        return jnp.sum(jax.lax.scan(lambda h, p: (mlp(h, *p), None), x, ws)[0] ** 2)

    def run_separate(ws, x):
        for p in ws:
            x = mlp(x, *p)
        return jnp.sum(x ** 2)

    wrap = jax.grad if grad else (lambda fn: fn)
    fns = [(jax.jit(wrap(run_stacked)), w), (jax.jit(wrap(run_separate)), sep)]
    out = {}
    for t in tokens:
        x = jnp.full((t, d), 0.1, jnp.float32)
        res = []
        for fn, ws in fns:
            jax.block_until_ready(fn(ws, x))
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(ws, x))
                ts.append(time.perf_counter() - t0)
            res.append(median(ts) * 1e3)
        out[t] = (res[0], res[1], (3 if grad else 1) * 2.0 * t * 3 * d * f * layers / 1e9)
    return out
