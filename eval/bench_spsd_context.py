"""SPSD's cost at long context: the packed dual view (one pass over S + 2T positions) against two forward
passes (the batch view and the stream view: 2S + 2T positions), over a grid of source lengths S and target
lengths T, from compiled programs only (the full value_and_grad training loss; nothing has to fit to run).

    python eval/bench_spsd_context.py                                  # CPU: XLA FLOPs, temporaries, times
    python eval/bench_spsd_context.py --topology v5e:2x2 --attention pallas   # TPU AOT (libtpu): memory per chip

Per (S, T): XLA's FLOPs of each compiled step (cost analysis; a small proxy model with its layers unrolled so
that the count covers every layer), the temporaries of each step (``memory_analysis``: per chip under
``--topology``, where the batch's rows are split over the chips) and, where ``S <= --time-max-s`` on CPU, the
median step time. Ratios are packed / two passes: below 1, the packed view pays. The expected token ratio
(S + 2T) / (2S + 2T) is printed beside them; with dense attention the score matrices alone give
(S + 2T)^2 / (2 (S + T)^2), which exceeds 1 where S < sqrt(2) T. ``--attention pallas`` (TPU) runs the packed
view's block-sparse kernel, which skips the masked blocks; the two passes' causal masks are run by the same
kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_objective import make_batch  # noqa: E402  (eval/: the examples that fill an (S, T) bucket)
from proactive_jax.method.objective import ObjectiveConfig, naive_loss_sums, packed_loss_sums  # noqa: E402
from proactive_jax.models.config import ModelConfig  # noqa: E402
from proactive_jax.models.qwen import abstract_params  # noqa: E402

PROXY = dict(model_type="qwen3", vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, scan_layers=False)


def compile_step(cfg, obj, fn, batch, devices):
    """The value_and_grad of ``fn``'s loss, compiled for ``devices`` (rows split over them)."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.asarray(devices, dtype=object), ("data",))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def loss(p, b, k):
        sums = fn(cfg, obj, p, b, k)
        return sums["batch"] + sums["mslm"] + 0.1 * sums["kl"]

    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract_params(cfg))
    args = {k: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                    sharding=rows if np.ndim(x) and np.shape(x)[0] == len(batch["source"]) else rep)
            for k, x in batch.items()}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # Pallas TPU kernels: shard_map over the rows
        return jax.jit(jax.value_and_grad(loss)).lower(params, args, key).compile()


def measure(compiled, batch, cfg, time_it: bool, repeats: int):
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out = {"temp_bytes": int(mem.temp_size_in_bytes), "flops": float(cost.get("flops", float("nan")))}
    if time_it:
        from proactive_jax.models.qwen import init_params

        params, key = init_params(cfg, 0), jax.random.PRNGKey(0)
        b = jax.tree.map(jnp.asarray, batch)
        jax.block_until_ready(compiled(params, b, key))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, b, key))
            times.append(time.perf_counter() - t0)
        out["step_s"] = float(np.median(times))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", default="512,1024,2048,4096,8192")
    ap.add_argument("--targets", default="64,128,256,512")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--topology", default=None, help="compile for a TPU slice (libtpu), e.g. v5e:2x2")
    ap.add_argument("--attention", default="dense", choices=["dense", "pallas", "auto"])
    ap.add_argument("--time-max-s", type=int, default=1024, help="time the CPU steps up to this source length")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    cfg = ModelConfig(**PROXY, attention=args.attention)
    obj = ObjectiveConfig(kl_topk=32)
    if args.topology:
        from proactive_jax.training.tpu import parse_topology, topology_devices

        devices = topology_devices(parse_topology(args.topology))
    else:
        devices = jax.devices()[:1]
    where = args.topology or f"{jax.devices()[0].platform} x1"
    print(f"proxy model: {PROXY['num_hidden_layers']} layers unrolled, d={PROXY['hidden_size']}, vocab "
          f"{PROXY['vocab_size']}; batch {args.batch}; attention {args.attention}; compiled for {where}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for s in (int(x) for x in args.sources.split(",")):
        for t in (int(x) for x in args.targets.split(",")):
            batch = make_batch(rng, args.batch, s, t, cfg.vocab_size)
            time_it = args.topology is None and s <= args.time_max_s
            res = {kind: measure(compile_step(cfg, obj, fn, batch, devices), batch, cfg, time_it, args.repeats)
                   for kind, fn in (("packed", packed_loss_sums), ("two_pass", naive_loss_sums))}
            row = {"S": s, "T": t, **res, "flops_ratio": res["packed"]["flops"] / res["two_pass"]["flops"],
                   "temp_ratio": res["packed"]["temp_bytes"] / max(res["two_pass"]["temp_bytes"], 1),
                   "token_ratio": (s + 2 * t) / (2 * s + 2 * t),
                   "score_ratio": (s + 2 * t) ** 2 / (2 * (s + t) ** 2)}
            if time_it:
                row["time_ratio"] = res["packed"]["step_s"] / res["two_pass"]["step_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    per = "per chip" if args.topology else ""
    print(f"\n| S | T | FLOPs packed / two passes | temporaries packed / two passes {per} | packed temp (MiB) | "
          f"step time packed / two passes | tokens (S+2T)/(2S+2T) | dense scores |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tr = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "-"
        print(f"| {r['S']} | {r['T']} | {r['flops_ratio']:.2f} | {r['temp_ratio']:.2f} | "
              f"{r['packed']['temp_bytes'] / 2**20:.0f} | {tr} | {r['token_ratio']:.2f} | {r['score_ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
