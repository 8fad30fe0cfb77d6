"""Time to first decode: a first and a second ``proactive-jax eval`` of the same run, as a user starts them.

    python eval/bench_startup.py [--run RUN_DIR] [--pairs 3] [--work DIR]

Each pair starts from an empty compilation cache (``$PROACTIVE_JAX_CACHE`` pointed at a fresh directory): the
first ``eval`` compiles and fills it, the second (a new process, a fresh ``out_dir``, the same run and settings)
reuses it. Measured per process: from its start to the first decoded batch (the first line of
``records.jsonl``, which is appended after every decoded batch) and to its exit. Printed: both times of every
pair, the ratio first / second, the medians, and the load average (``os.getloadavg``) before and after each
pair: on a shared machine the figures move with the load.

Without ``--run`` a tiny run is trained first (``configs/tiny-synthetic.yaml steps=4``, its own cache, so the
evals start cold). The eval is the README's tiny one: task ``lookup``, 16 examples, heads batch, wait-k and
entropy, 8 new tokens, no calibration.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_ARGS = ["task=lookup", "num_examples=16", "calibration_split=null",
             "heads=[batch, 'wait-k:k=1|3', 'entropy:tau=0.05|0.1']", "max_new_tokens=8", "batch_size=16",
             "progress=false"]


def _env(cache: Path) -> dict:
    env = dict(os.environ, PROACTIVE_JAX_CACHE=str(cache), PYTHONPATH=str(ROOT))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def train_tiny(work: Path) -> Path:
    run = work / "run"
    cmd = [sys.executable, "-m", "proactive_jax", "train", str(ROOT / "configs/tiny-synthetic.yaml"), "steps=4",
           f"out_dir={run}", "progress=false"]
    subprocess.run(cmd, env=_env(work / "train-cache"), check=True, stdout=subprocess.DEVNULL)
    return run


def timed_eval(run: Path, out: Path, cache: Path) -> tuple[float, float]:
    """(seconds to the first decoded batch, seconds to exit) of one ``eval`` process."""
    records = out / "records.jsonl"
    cmd = [sys.executable, "-m", "proactive_jax", "eval", f"checkpoint={run}", *EVAL_ARGS, f"out_dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if first is None and records.exists() and records.stat().st_size > 0:
            first = time.perf_counter() - t0
        time.sleep(0.01)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    if first is None:  # finished between two polls
        first = total
    return first, total


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a training run (default: train a tiny one first)")
    ap.add_argument("--pairs", type=int, default=3, help="first/second pairs, each from an empty cache")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_startup_"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else train_tiny(work)
    print(f"run {run}; cpus {os.cpu_count()}; eval {' '.join(EVAL_ARGS)}", flush=True)
    ratios, firsts, seconds = [], [], []
    for i in range(args.pairs):
        cache = work / f"cache{i}"
        before = _load()
        f1, t1 = timed_eval(run, work / f"out{i}a", cache)
        f2, t2 = timed_eval(run, work / f"out{i}b", cache)
        ratios.append(f1 / f2)
        firsts.append(f1)
        seconds.append(f2)
        print(f"pair {i + 1}: first eval {f1:.1f} s to first decode ({t1:.1f} s in all), second {f2:.1f} s "
              f"({t2:.1f} s); ratio {f1 / f2:.2f}x; load average {before} -> {_load()}", flush=True)
    print(f"median: first {statistics.median(firsts):.1f} s, second {statistics.median(seconds):.1f} s, ratio "
          f"{statistics.median(ratios):.2f}x (load average now {_load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
