"""Audio loader throughput (proactive_jax.data.audio_stream) against what a 7B train step consumes.

    nice -n 10 python eval/bench_audio_loader.py --workers 0 1 2 --examples 48 \
        --config configs/qwen2-audio-7b-librispeech.yaml

Source: ``--source flac`` (default) writes ``--rows`` synthetic 10-15 s utterances as FLAC bytes into
ArrayRecord shards with ``prepare_audio`` (as LibriSpeech's FLAC would be), then streams them: read, FLAC
decode, checks, one 30 s log-mel window (128 bins, running clamp), tokenized transcript. ``--source
synthetic`` generates the audio in the worker instead (no decode). For each worker count N the first
``--warmup`` examples (worker start-up) are not timed; then ``--examples`` examples are.

The step's demand comes from the run config (``data.global_batch_size``, ``audio.max_seconds``, the encoder
window from ``model.config_json``): a step consumes G examples = G x (mean utterance seconds) of audio and G
mel windows. The TPU step time is unknown here, so the report gives the loader rate needed per
step-second (G / t_step examples/s for the whole job) and, from the measured rate per worker, the step
time one host can feed and the workers per host needed for a given step time and host count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def demand(config: str | None) -> dict:
    """Global batch, max seconds and mel window of the run config (defaults: 64 x 30 s, 128 x 3000)."""
    out = {"global_batch": 64, "max_seconds": 30.0, "num_mel_bins": 128, "window_frames": 3000, "config": None}
    if config and Path(config).is_file():
        import yaml

        cfg = yaml.safe_load(Path(config).read_text())
        out["config"] = config
        out["global_batch"] = int(cfg.get("data", {}).get("global_batch_size", out["global_batch"]))
        out["max_seconds"] = float(cfg.get("audio", {}).get("max_seconds", out["max_seconds"]))
        cj = cfg.get("model", {}).get("config_json")
        if cj and Path(cj).is_file():
            ac = json.loads(Path(cj).read_text()).get("audio_config", {})
            out["num_mel_bins"] = int(ac.get("num_mel_bins", 128))
            out["window_frames"] = 2 * int(ac.get("max_source_positions", 1500))
    return out


def flac_rows(n: int, seed: int, lo: float, hi: float):
    import io

    import soundfile as sf

    from proactive_jax.data.audio_sources import SyntheticAudioSource

    src = SyntheticAudioSource(n, seed, lo, hi)
    for i in range(n):
        r = src[i]
        buf = io.BytesIO()
        sf.write(buf, r["audio"]["array"], 16000, format="FLAC", subtype="PCM_16")
        yield {"audio": {"bytes": buf.getvalue()}, "text": r["text"], "id": r["id"]}


def run_one(source, tok, feats, workers: int, warmup: int, examples: int, seed: int) -> dict:
    from proactive_jax.data.audio_stream import audio_example_stream

    t_open = time.perf_counter()
    with audio_example_stream(source, tokenizer=tok, features=feats, seed=seed, num_workers=workers) as s:
        for _ in range(warmup):
            next(s)
        t_first = time.perf_counter() - t_open
        t0 = time.perf_counter()
        frames = seconds = 0.0
        for _ in range(examples):
            e = next(s)
            frames += int(e["valid_frames"])
            seconds += float(e["seconds"])
        dt = time.perf_counter() - t0
    return {"workers": workers, "examples": examples, "seconds": dt, "startup_s": t_first,
            "examples_per_s": examples / dt, "mel_frames_per_s": examples * feats.window_frames / dt,
            "valid_mel_frames_per_s": frames / dt, "audio_s_per_s": seconds / dt, "mean_utt_s": seconds / examples,
            "peak_rss_parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def memory_run(source, tok, feats, n: int, seed: int) -> dict:
    """Peak RSS (in process, no workers) after n/10 and after n examples of the full-size features."""
    from proactive_jax.data.audio_stream import audio_example_stream

    s = audio_example_stream(source, tokenizer=tok, features=feats, seed=seed)
    marks = {}
    for i in range(1, n + 1):
        next(s)
        if i in (n // 10, n):
            marks[i] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"examples": n, "peak_rss_mb": marks, "growth_mb": marks[n] - marks[n // 10]}
    print(f"memory: peak RSS {marks[n // 10]:.0f} MiB after {n // 10} examples, {marks[n]:.0f} MiB after {n} "
          f"(growth {out['growth_mb']:.1f} MiB; one example's features are "
          f"{feats.num_mel_bins * feats.window_frames * 4 / 2**20:.1f} MiB)")
    return out


def report(res: list, dem: dict, hosts: list) -> dict:
    G = dem["global_batch"]
    per_worker = next((r["examples_per_s"] for r in res if r["workers"] == 1), res[0]["examples_per_s"])
    mib = G * dem["num_mel_bins"] * dem["window_frames"] * 4 / 2**20
    lines = [f"demand: global batch {G} (config {dem['config'] or 'default 64 x 30 s'}); one step = {G} mel windows "
             f"[{dem['num_mel_bins']}, {dem['window_frames']}] = {mib:.0f} MiB of float32 features; "
             f"needed loader rate = {G} / t_step examples/s for the whole job"]
    for r in res:
        lines.append(f"workers {r['workers']}: {r['examples_per_s']:.2f} examples/s, {r['mel_frames_per_s']:.0f} mel "
                     f"frames/s ({r['valid_mel_frames_per_s']:.0f} valid), {r['audio_s_per_s']:.1f} audio s/s; "
                     f"start-up {r['startup_s']:.1f} s; one host feeds a step of >= {G / r['examples_per_s']:.1f} s; "
                     f"peak RSS parent {r['peak_rss_parent_mb']:.0f} MiB, worker {r['peak_rss_child_mb']:.0f} MiB")
    need = {}
    for t_step in (1.0, 2.0, 4.0):
        for h in hosts:
            need[f"t_step={t_step}s,hosts={h}"] = math.ceil(G / (t_step * h * per_worker))
    lines.append(f"workers per host needed at {per_worker:.2f} examples/s per worker (this CPU, loaded): "
                 + ", ".join(f"{k}: {v}" for k, v in need.items()))
    print("\n".join(lines))
    return {"per_worker_examples_per_s": per_worker, "workers_needed": need, "lines": lines}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--examples", type=int, default=48)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--source", choices=("flac", "synthetic"), default="flac")
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=15.0)
    ap.add_argument("--config", default="configs/qwen2-audio-7b-librispeech.yaml")
    ap.add_argument("--hosts", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", type=int, default=0, help="also stream this many examples in process and "
                    "report peak RSS after a tenth of them and after all")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)

    from proactive_jax.data.audio_sources import SyntheticAudioSource, prepare_audio
    from proactive_jax.data.audio_stream import AudioFeatures
    from proactive_jax.data.synthetic import load_tokenizer

    dem = demand(a.config)
    feats = AudioFeatures(num_mel_bins=dem["num_mel_bins"], window_frames=dem["window_frames"], clamp="running")
    tok = load_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        if a.source == "flac":
            t0 = time.perf_counter()
            prepare_audio(flac_rows(a.rows, a.seed, a.min_seconds, a.max_seconds), tmp, rows_per_shard=32)
            print(f"prepare_audio: {a.rows} FLAC rows in {time.perf_counter() - t0:.1f} s "
                  f"({sum(p.stat().st_size for p in Path(tmp).glob('*.array_record')) / a.rows / 1024:.0f} KiB a row)")
            source = tmp
        else:
            source = SyntheticAudioSource(a.rows, a.seed, a.min_seconds, a.max_seconds)
        res = []
        for n in a.workers:
            res.append(run_one(source, tok, feats, n, a.warmup, a.examples, a.seed))
            print(json.dumps(res[-1]), flush=True)
        mem = memory_run(source, tok, feats, a.memory, a.seed) if a.memory else None
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
                      f"{os.getloadavg()[0]:.1f} (shared)", "python": sys.version.split()[0], "args": vars(a),
           "demand": dem, "results": res, "memory": mem, **report(res, dem, a.hosts)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
