"""Benchmark HF checkpoint load/export: wall time and peak host RSS.

Builds random Qwen2-shaped checkpoints locally (numpy -> ``safetensors.numpy.save_file``; no torch, no
download): ``tiny`` (float32) and ``0.5b`` (Qwen2.5-0.5B shape, 494M params, float32, 2 shards of
<= 1 GB) and ``0.5b-bf16`` (same shape, bfloat16, one file). Each phase runs in a fresh subprocess
that reports its own ``ru_maxrss`` after the imports (baseline) and at the end (peak):

- ``load``:   ``load_pretrained`` with the default reader (pread) and default placement (jax.device_put)
- ``load-host``: pread reader, ``place=keep_on_host`` (numpy leaves)
- ``load-safe_open``: ``safetensors.safe_open`` (mmap) reader, default placement
- ``export``: load (pread) then ``save_pretrained`` float32 with the default 5GB shard limit; the peak
  during export is reported beside the peak after loading

Usage: ``python eval/bench_hf_io.py [--sizes tiny,0.5b,0.5b-bf16] [--workdir DIR] [--keep]``.
The checkpoints are deleted at the end unless ``--keep``. The page cache is warm (files were just
written); the numbers are for this machine only.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # name: (hf config overrides, stored dtype, max shard bytes)
    "tiny": (dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2), "float32", 10**9),
    "0.5b": (dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2), "float32", 10**9),
    "0.5b-bf16": (dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2), "bfloat16", 10**10),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def build(name: str, out: Path) -> dict:
    """Write a random checkpoint shard by shard (only one shard's tensors in memory)."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    from proactive_jax.models.config import ModelConfig, to_hf_dict
    from proactive_jax.models.hf import expected_tensors

    overrides, dtype, shard = SIZES[name]
    cfg = ModelConfig(model_type="qwen2", head_dim=overrides["hidden_size"] // overrides["num_attention_heads"],
                      qkv_bias=True, o_bias=False, qk_norm=False, tie_word_embeddings=True,
                      rope_theta=1e6, bos_token_id=151643, eos_token_id=151645, **overrides)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(to_hf_dict(cfg, torch_dtype=dtype), indent=2))
    npd = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    item = 4 if dtype == "float32" else 2
    names = list(expected_tensors(cfg).items())
    groups, cur, size = [], [], 0
    for n, s in names:
        b = int(np.prod(s)) * item
        if cur and size + b > shard:
            groups.append(cur)
            cur, size = [], 0
        cur.append((n, s))
        size += b
    groups.append(cur)
    rng = np.random.default_rng(0)
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for n, s in group:
            x = rng.standard_normal(s, dtype=np.float32)
            x *= 0.02
            if n.endswith("norm.weight"):
                x += 1.0
            tensors[n] = x.astype(npd)
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in tensors})
        del tensors
    if len(groups) > 1:
        total = sum(int(np.prod(s)) * item for _, s in names)
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    n_params = sum(int(np.prod(s)) for _, s in names)
    disk = sum(f.stat().st_size for f in out.iterdir())
    return dict(params=n_params, dtype=dtype, shards=len(groups), disk_mib=disk / 2**20)


def phase(kind: str, ckpt: Path, out: Path | None) -> dict:
    """One measured phase, run in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from proactive_jax.models.hf import keep_on_host, load_pretrained
    from proactive_jax.models.hf_export import save_pretrained

    jnp.zeros(1).block_until_ready()  # backend up
    base = _rss_mib()
    res = {"baseline_mib": base}
    kw = {}
    if kind == "load-host":
        kw["place"] = keep_on_host
    if kind == "load-safe_open":
        kw["reader"] = "safe_open"
    t = time.perf_counter()
    config, params = load_pretrained(ckpt, **kw)
    jax.block_until_ready(params)
    res["load_s"] = time.perf_counter() - t
    res["peak_after_load_mib"] = _rss_mib()
    res["params_f32_mib"] = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(params)) * 4 / 2**20
    if kind == "export":
        t = time.perf_counter()
        save_pretrained(config, params, out)
        res["export_s"] = time.perf_counter() - t
        res["peak_after_export_mib"] = _rss_mib()
        res["export_disk_mib"] = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    return res


def _sub(args: list[str]) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{args} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,0.5b,0.5b-bf16")
    p.add_argument("--phases", default="load,load-host,load-safe_open,export")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--_build", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_phase", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_ckpt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._build:
        print(json.dumps(build(a._build, Path(a._ckpt))))
        return 0
    if a._phase:
        print(json.dumps(phase(a._phase, Path(a._ckpt), Path(a._out) if a._out else None)))
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_hf_io-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for size in a.sizes.split(","):
            ckpt = work / size
            t = time.perf_counter()
            info = _sub(["--_build", size, "--_ckpt", str(ckpt)])
            info["build_s"] = time.perf_counter() - t
            print(f"# {size}: {info}", flush=True)
            for ph in a.phases.split(","):
                out = work / f"{size}-export"
                r = _sub(["--_phase", ph, "--_ckpt", str(ckpt), "--_out", str(out)])
                shutil.rmtree(out, ignore_errors=True)
                r.update(size=size, phase=ph, **{k: info[k] for k in ("params", "dtype", "shards", "disk_mib")})
                results.append(r)
                print(json.dumps(r), flush=True)
            if not a.keep:
                shutil.rmtree(ckpt, ignore_errors=True)
    finally:
        if not a.keep and a.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| checkpoint | phase | params | stored | load s | peak RSS after load MiB (baseline) "
          "| export s | peak RSS export MiB | f32 params MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        exp_s = f"{r['export_s']:.2f}" if "export_s" in r else ""
        exp_m = f"{r['peak_after_export_mib']:.0f}" if "peak_after_export_mib" in r else ""
        print(f"| {r['size']} | {r['phase']} | {r['params'] / 1e6:.1f}M | {r['dtype']}, {r['shards']} file(s), "
              f"{r['disk_mib']:.0f} MiB | {r['load_s']:.2f} | {r['peak_after_load_mib']:.0f} "
              f"({r['baseline_mib']:.0f}) | {exp_s} | {exp_m} | {r['params_f32_mib']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
