"""Train-step throughput: the packed dual view vs the naive two-pass objective, side by side.

Runs the real jitted train step (``proactive_jax.training.step.build_train_step``: loss, one value_and_grad, AdamW,
donated state) for both objective paths on the same batches and reports step time (the median over
``--rounds`` interleaved rounds of ``--steps`` steps dispatched back to back, as the training loop does), tokens/s
(real example tokens, source + target, per second), the
packed/naive speed ratio, compile time, peak memory (XLA's buffer analysis of the compiled step; the
device's peak where the backend reports it), the model FLOP/s achieved, the FLOP/s of a 2048^3 matmul measured in
the same run on the same device and dtype, their ratio (a measured "MFU": on a CPU, where no vendor peak applies)
and, given the accelerator's peak, MFU.

    python eval/bench_train.py                                   # tiny config, synthetic batches (CPU)
    python eval/bench_train.py --model qwen2.5-0.5b --bucket 256 128 --batch 8 --dtype bfloat16 \\
        --remat --peak-tflops 989                                # e.g. one H100 (bf16 dense peak)
    python eval/bench_train.py --model-json configs/qwen2.5-3b.json ...

Model FLOPs per step (what MFU divides by; remat recomputation is not counted):
    6 * N_layers * P  +  6 * V * D * R  +  3 * 4 * L * H * hd * sum_rows(Lq * Lk)
with N_layers the non-embedding parameters, P the token positions run through the decoder (packed:
B * (S + 2T); naive: B * 2 * (S + T)), R the rows that get logits (B * 2T in both), and the attention
term counting the dense [Lq, Lk] score and value matmuls of every layer (Lq = Lk = S + 2T packed,
S + T twice naive), forward + backward (x3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                         qkv_bias=True, qk_norm=False, tie_word_embeddings=True, rope_theta=1e6,
                         max_position_embeddings=32768),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       qkv_bias=False, qk_norm=True, tie_word_embeddings=True, rope_theta=1e6,
                       max_position_embeddings=40960),
}


def model_flops(cfg, batch, packed: bool, one_view: bool = False) -> float:
    b = int(batch["source"].shape[0])
    s_cap, t_cap = int(batch["source"].shape[1]), int(batch["target"].shape[1])
    d, v = cfg.hidden_size, cfg.vocab_size
    n_layers = cfg.num_params() - v * d * (1 if cfg.tie_word_embeddings else 2) - d
    h, hd, nl = cfg.num_attention_heads, cfg.head_dim, cfg.num_hidden_layers
    if one_view:  # schedule=full: [source | target] once, its logits used as both views
        return 6.0 * n_layers * b * (s_cap + t_cap) + 6.0 * v * d * b * t_cap + 3.0 * 4.0 * nl * h * hd * b * (
            s_cap + t_cap) ** 2
    if packed:
        positions = b * (s_cap + 2 * t_cap)
        attn = b * (s_cap + 2 * t_cap) ** 2
    else:
        positions = b * 2 * (s_cap + t_cap)
        attn = b * 2 * (s_cap + t_cap) ** 2
    return 6.0 * n_layers * positions + 6.0 * v * d * b * 2 * t_cap + 3.0 * 4.0 * nl * h * hd * attn


def random_batches(n, batch, s_cap, t_cap, vocab, seed=0):
    """Streaming examples that fill the bucket (words of 1-3 tokens), packed like the pipeline does."""
    import numpy as np

    from proactive_jax.method.objective import pack_batch
    from proactive_jax.data.example import StreamExample

    rng = np.random.default_rng(seed)
    tok = lambda k: tuple(int(x) for x in rng.integers(10, vocab, k))  # noqa: E731
    out = []
    for _ in range(n):
        exs = []
        for _ in range(batch):
            s = int(rng.integers(s_cap * 3 // 4, s_cap + 1))
            t = int(rng.integers(t_cap * 3 // 4, t_cap + 1))
            units, left = [], s - 6
            while left > 0:
                k = min(left, int(rng.integers(1, 4)))
                units.append(tok(k))
                left -= k
            exs.append(StreamExample(prompt=tok(4), units=units, end=tok(2), header=tok(2), target=tok(t - 2)))
        out.append(pack_batch(exs, (s_cap, t_cap), batch_size=batch))
    return out


def measured_matmul_flops(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted n x n x n matmul in ``dtype`` on the default device (the best of ``repeats``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest" if dtype == "float32" else None))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def peak_device_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


class Mode:
    """One objective path: compiled step, its state and batches."""

    def __init__(self, packed, args, run, model_cfg, batches, mesh):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from proactive_jax.training import mesh as TM, step as TS
        from proactive_jax.models.qwen import init_params

        from proactive_jax.method import objective as MO

        self.name = packed if isinstance(packed, str) else ("packed" if packed else "naive")
        if self.name not in ("packed", "naive", "dual"):
            raise SystemExit(f"--modes: unknown mode {self.name!r}; expected packed, naive or dual")
        # "dual": the packed dual view even where packed_loss_sums takes its one-view path (schedule=full)
        packed = self.name != "naive"
        spec = TS.StepSpec(model_cfg, run.objective, run.optim, 10_000, 1, packed, 0, mesh, run.mesh.param_sharding)
        sh, _ = TS.state_shardings(spec)
        params = jax.jit(lambda: init_params(model_cfg, 0), out_shardings=sh["params"])()
        opt = jax.jit(TS.make_optimizer(run.optim, 10_000).init, out_shardings=sh["opt_state"])(params)
        self.state = {"step": jax.device_put(jnp.int32(0), sh["step"]), "params": params, "opt_state": opt}
        saved = TS.packed_loss_sums
        if self.name == "dual":
            TS.packed_loss_sums = MO.dual_view_loss_sums  # read by step.sums_function when the step is built
        try:
            # build_train_step is cached per spec: the dual step is built uncached
            self.step = TS.build_train_step.__wrapped__(spec) if self.name == "dual" else TS.build_train_step(spec)
        finally:
            TS.packed_loss_sums = saved
        b_sh = TM.batch_sharding(mesh)
        self.batches = [TM.global_batch(b, b_sh, 1) for b in batches]
        t0 = time.perf_counter()
        compiled = self.step.lower(self.state, self.batches[0]).compile()
        self.compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        self.xla_bytes = None
        if mem is not None:
            self.xla_bytes = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                                 - getattr(mem, "alias_size_in_bytes", 0))
        self.example_tokens = float(np.mean([np.sum((b["source_len"] + b["header_len"] + b["target_len"])
                                                    * b["example_mask"]) for b in batches]))
        one_view = self.name == "packed" and run.objective.schedule == "full"  # batch_view_loss_sums
        self.flops = float(np.mean([model_flops(model_cfg, b, packed, one_view) for b in batches]))
        self.rounds, self.blocking = [], []
        self.run(args.warmup)

    def run(self, n):
        import jax

        t = time.perf_counter()
        for i in range(n):
            self.state, self.m = self.step(self.state, self.batches[i % len(self.batches)])
        jax.block_until_ready(self.state)
        return (time.perf_counter() - t) / max(n, 1)

    def measure(self, steps):
        import jax

        for i in range(2):  # blocking single steps (latency spread)
            t = time.perf_counter()
            self.state, self.m = self.step(self.state, self.batches[i % len(self.batches)])
            jax.block_until_ready(self.m)
            self.blocking.append(time.perf_counter() - t)
        self.rounds.append(self.run(steps))  # back-to-back (throughput, as the training loop runs)

    def result(self, peak_tflops, n_dev, matmul_flops):
        import numpy as np

        med = float(np.median(self.rounds))
        out = {"mode": self.name, "compile_s": self.compile_s, "step_s_median": med,
               "step_s_min": float(np.min(self.rounds)), "step_s_max": float(np.max(self.rounds)),
               "step_s_blocking_median": float(np.median(self.blocking)), "rounds": len(self.rounds),
               "example_tokens_per_s": self.example_tokens / med, "model_tflops_per_step": self.flops / 1e12,
               "achieved_tflops": self.flops / med / 1e12, "xla_buffer_bytes": self.xla_bytes,
               "loss": float(self.m["loss"]), "mfu_vs_matmul": self.flops / med / (matmul_flops * n_dev)}
        if peak_tflops:
            out["mfu"] = self.flops / med / (peak_tflops * 1e12 * n_dev)
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny-synthetic.yaml"))
    p.add_argument("--model", default=None, choices=sorted(MODELS), help="random weights of this shape")
    p.add_argument("--model-json", default=None, help="a HF config.json (random weights of that shape)")
    p.add_argument("--bucket", type=int, nargs=2, default=None, metavar=("S", "T"),
                   help="random examples filling this bucket (default: the config's synthetic data)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"))
    p.add_argument("--remat", action="store_true")
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per mode (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--modes", default="packed,naive",
                   help="comma list of packed | naive | dual (dual: the two-copy packed view even for schedule=full)")
    p.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU (H100 bf16: 989)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="run-config overrides (key=value)")
    args = p.parse_args(argv)

    import jax

    from proactive_jax.training import batches as TB, data as TD, mesh as TM, state as TSt
    from proactive_jax.models.config import ModelConfig, load_hf_config
    from proactive_jax.training.run_config import load_run_config

    import tempfile

    scratch = tempfile.mkdtemp(prefix="bench_train-")  # data cache; nothing is trained to disk
    over = [f"out_dir={scratch}"] + list(args.overrides) + ["progress=false", "tensorboard=false", "eval_every=0"]
    if args.batch:
        over.append(f"data.global_batch_size={args.batch}")
    run = load_run_config(args.config, over)
    model_cfg = TSt.resolve_model_config(run.model)
    if args.model:
        model_cfg = ModelConfig(**MODELS[args.model])
    elif args.model_json:
        model_cfg = load_hf_config(args.model_json)
    model_cfg = model_cfg.replace(dtype=args.dtype or model_cfg.dtype, remat=args.remat or model_cfg.remat)
    mesh = TM.make_mesh(run.mesh)
    if args.bucket:
        batches = random_batches(4, run.data.global_batch_size, *args.bucket, model_cfg.vocab_size)
    else:
        data = TD.build_data(run, model_cfg, n_devices=mesh.size)
        buckets = [data.train.host_batch(i)[0] for i in range(data.train.steps_per_epoch)]
        big = max(set(buckets), key=lambda b: b[0] + b[1])  # one bucket shape: one compile per mode
        steps = [i for i, b in enumerate(buckets) if b == big][:4]
        batches = [TB.device_batch(data.train.batch_at(i)) for i in steps]
    shape = (batches[0]["source"].shape[0], batches[0]["source"].shape[1], batches[0]["target"].shape[1])
    modes = [Mode(m, args, run, model_cfg, batches, mesh) for m in args.modes.split(",")]
    for _ in range(args.rounds):  # interleaved rounds: a contended machine slows both paths alike
        for m in modes:
            m.measure(args.steps)
    matmul = measured_matmul_flops(model_cfg.dtype)  # after the rounds: same run, same device and dtype
    results = [m.result(args.peak_tflops, mesh.size, matmul) for m in modes]
    dev = jax.devices()[0]
    info = {"command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else list(argv))),
            "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{mesh.size}",
            "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "host": platform.processor() or platform.machine(),
            "jax": jax.__version__, "model": {k: getattr(model_cfg, k) for k in (
                "model_type", "num_hidden_layers", "hidden_size", "vocab_size", "dtype", "remat")},
            "params": model_cfg.num_params(), "batch_B_S_T": shape, "matmul_tflops_measured": matmul / 1e12,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_bytes": peak_device_bytes(), "results": results}
    by = {r["mode"]: r for r in results}
    if "packed" in by and "naive" in by:
        info["packed_speedup"] = by["naive"]["step_s_median"] / by["packed"]["step_s_median"]
    if "packed" in by and "dual" in by:
        info["packed_over_dual_speedup"] = by["dual"]["step_s_median"] / by["packed"]["step_s_median"]
    print(f"{info['device']}  model {info['model']}  B,S,T={shape}  load {tuple(round(x, 1) for x in info['loadavg'])}")
    print(f"measured 2048^3 {model_cfg.dtype} matmul: {matmul / 1e12:.4f} TFLOP/s per device "
          f"(mm-MFU = model TFLOP/s / this)")
    print(f"{'mode':8s} {'compile s':>9s} {'step ms':>9s} {'min-max ms':>17s} {'tok/s':>10s} {'TFLOP/step':>10s} "
          f"{'TFLOP/s':>8s} {'mm-MFU':>6s} {'XLA MB':>8s}" + ("  MFU" if args.peak_tflops else ""))
    for r in results:
        mb = f"{r['xla_buffer_bytes'] / 2**20:8.1f}" if r["xla_buffer_bytes"] is not None else f"{'n/a':>8s}"
        print(f"{r['mode']:8s} {r['compile_s']:9.1f} {r['step_s_median'] * 1e3:9.2f} "
              f"{r['step_s_min'] * 1e3:8.1f}-{r['step_s_max'] * 1e3:8.1f} {r['example_tokens_per_s']:10.0f} "
              f"{r['model_tflops_per_step']:10.4f} {r['achieved_tflops']:8.3f} {r['mfu_vs_matmul']:6.3f} {mb}"
              + (f"  {r['mfu']:.3f}" if args.peak_tflops else ""))
    if "packed_speedup" in info:
        print(f"packed / naive speed: {info['packed_speedup']:.2f}x   peak RSS {info['peak_rss_mb']:.0f} MB")
    if "packed_over_dual_speedup" in info:
        print(f"packed / dual speed: {info['packed_over_dual_speedup']:.2f}x (schedule {run.objective.schedule})")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")
    return info


if __name__ == "__main__":
    main()
