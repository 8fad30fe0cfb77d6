"""Is the input pipeline a training bottleneck? Step time of the real jitted train step with and without
data loading, for the tiny synthetic config, on one device.

    python eval/bench_pipeline.py [--config configs/tiny-synthetic.yaml] [--steps 100]

(a) data only: pipeline batch for step s -> device_batch -> global array, (b) step only on batches
loaded beforehand, (c) both, as the train loop does. Reported per step, means over the steps, best of two
alternating rounds, after a warm-up step (compilation excluded).
"""
import argparse
import time

import jax

from proactive_jax.training.run_config import load_run_config
from proactive_jax.training.batches import device_batch
from proactive_jax.training.data import build_data
from proactive_jax.training.mesh import batch_sharding, global_batch, make_mesh
from proactive_jax.training.state import resolve_model_config
from proactive_jax.training.step import StepSpec, build_train_step, make_optimizer, state_shardings
from proactive_jax.models.qwen import init_params


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny-synthetic.yaml")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="/tmp/bench_pipeline")
    args = ap.parse_args()
    run = load_run_config(args.config, [f"out_dir={args.out}", "mesh.data=1", f"steps={args.steps + 1}"])
    devices = jax.devices()[:1]
    mesh = make_mesh(run.mesh, devices)
    cfg = resolve_model_config(run.model)
    t0 = time.perf_counter()
    data = build_data(run, cfg, host_index=0, host_count=1, n_devices=1)
    t_build = time.perf_counter() - t0
    spec = StepSpec(cfg, run.objective, run.optim, args.steps + 1, run.data.accum_steps, run.packed, run.seed, mesh,
                    run.mesh.param_sharding)
    sh, _ = state_shardings(spec)
    params = jax.device_put(init_params(cfg, 0), sh["params"])
    opt = jax.jit(make_optimizer(run.optim, args.steps + 1).init, out_shardings=sh["opt_state"])(params)
    state = {"step": jax.device_put(jax.numpy.int32(0), sh["step"]), "params": params, "opt_state": opt}
    step_fn = build_train_step(spec)
    b_sh = batch_sharding(mesh)

    def load(it):
        return global_batch(device_batch(next(it)), b_sh, 1)

    it = data.train.batches_from(0)
    state, m = step_fn(state, load(it))  # compile
    jax.block_until_ready(m)

    it = data.train.batches_from(1)
    t0 = time.perf_counter()
    pre = [load(it) for _ in range(args.steps)]
    jax.block_until_ready(pre)
    t_data = (time.perf_counter() - t0) / args.steps

    def step_only(state):
        t0 = time.perf_counter()
        for b in pre:
            state, m = step_fn(state, b)
        jax.block_until_ready(m)
        return state, (time.perf_counter() - t0) / args.steps

    def data_and_step(state):
        it = data.train.batches_from(1)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, m = step_fn(state, load(it))
        jax.block_until_ready(m)
        return state, (time.perf_counter() - t0) / args.steps

    t_step = t_both = float("inf")
    for _ in range(2):  # alternate, best of two rounds each
        state, t = step_only(state)
        t_step = min(t_step, t)
        state, t = data_and_step(state)
        t_both = min(t_both, t)

    bs = run.data.global_batch_size
    print(f"config {args.config}: global batch {bs}, buckets {run.data.buckets}, {args.steps} steps, 1 CPU device")
    print(f"data build (generate + tokenize + cache, once): {t_build:.2f} s")
    print(f"(a) data only  : {1e3 * t_data:7.2f} ms/step ({bs / t_data:,.0f} examples/s)")
    print(f"(b) step only  : {1e3 * t_step:7.2f} ms/step")
    print(f"(c) data + step: {1e3 * t_both:7.2f} ms/step  (data loading adds {100 * (t_both / t_step - 1):.1f}%)")


if __name__ == "__main__":
    main()
