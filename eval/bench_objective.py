"""Training-objective cost, packed dual view (one pass) vs the naive two passes, side by side.

QA-shaped batches (long source, short target) and MT-shaped batches (source ~ target). For each: the
compiled value_and_grad step time (median of timed runs after warm-up), XLA's compiled memory estimate
(temp + argument bytes) and the FLOPs XLA reports, as packed/naive ratios, with the expected token
ratio (S + 2T) / (2S + 2T).

    python eval/bench_objective.py [--model tiny|small] [--batch 8] [--repeats 5]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.models.qwen import init_params
from proactive_jax.method.objective import ObjectiveConfig, naive_loss_sums, pack_batch, packed_loss_sums
from proactive_jax.data.example import StreamExample

MODELS = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=32),
}
SHAPES = {"QA (S=448, T=32)": (448, 32), "MT (S=96, T=96)": (96, 96)}


def make_batch(rng, b, s, t, vocab):
    exs = []
    for _ in range(b):
        n_units = max(1, (s - 24) // 4)
        units = [tuple(rng.integers(3, vocab, 4)) for _ in range(n_units)]
        prompt = tuple(rng.integers(3, vocab, s - 4 * n_units - 2))
        exs.append(StreamExample(prompt=prompt, units=units, end=(1, 2), header=(5, 6, 7),
                                 target=tuple(rng.integers(3, vocab, t - 3))))
    return pack_batch(exs, (s, t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg = ModelConfig(model_type="qwen3", **MODELS[args.model])
    params = init_params(cfg, 0)
    obj = ObjectiveConfig(kl_topk=32)
    rng = np.random.default_rng(0)
    rows = []
    for name, (s, t) in SHAPES.items():
        batch = jax.tree_util.tree_map(jnp.asarray, make_batch(rng, args.batch, s, t, cfg.vocab_size))
        res = {}
        for kind, fn in (("packed", packed_loss_sums), ("naive", naive_loss_sums)):
            def loss(p, b, k, fn=fn):
                sums = fn(cfg, obj, p, b, k)
                return sums["batch"] + sums["mslm"] + 0.1 * sums["kl"]
            step = jax.jit(jax.value_and_grad(loss))
            key = jax.random.PRNGKey(0)
            compiled = step.lower(params, batch, key).compile()
            mem = compiled.memory_analysis()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            jax.block_until_ready(compiled(params, batch, key))
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(params, batch, key))
                times.append(time.perf_counter() - t0)
            res[kind] = {"step_s": float(np.median(times)),
                         "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
                         "flops": float(cost.get("flops", float("nan"))) if cost else float("nan")}
        row = {"shape": name, "packed": res["packed"], "naive": res["naive"],
               "time_ratio": res["packed"]["step_s"] / res["naive"]["step_s"],
               "temp_mem_ratio": res["packed"]["temp_bytes"] / max(res["naive"]["temp_bytes"], 1),
               "flops_ratio": res["packed"]["flops"] / res["naive"]["flops"],
               "token_ratio_expected": (s + 2 * t) / (2 * s + 2 * t)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| batch shape | packed step (s) | naive step (s) | time ratio | XLA FLOPs ratio | temp memory ratio "
          "| expected (S+2T)/(2S+2T) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['packed']['step_s']:.3f} | {r['naive']['step_s']:.3f} | {r['time_ratio']:.2f} | "
              f"{r['flops_ratio']:.2f} | {r['temp_mem_ratio']:.2f} | {r['token_ratio_expected']:.2f} |")


if __name__ == "__main__":
    main()
