"""Data-pipeline throughput and host memory on a synthetic set (default 100k examples).

    python eval/bench_data.py --task lookup --n 100000 --batch 64
    python eval/bench_data.py --task word-map --n 100000 --batch 64 --tokenizer /path/to/Qwen2.5-3B-Instruct

Phases, each timed: text generation (``make_task``), tokenization (``prepare_examples``: render every
example, write the .npz cache), cache reload (a rerun), pipeline construction (lengths + bucket assignment)
and one epoch of batches through a numpy pad collate. Reports examples/s per phase, RSS after each phase
and the peak RSS of the process, as JSON on stdout (and to ``--json`` if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np


def rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def pad_collate(examples, bucket):
    """Right-pad source group to S and header+target to T; per-row lengths."""
    S, T = bucket
    B = len(examples)
    src = np.zeros((B, S), np.int32)
    tgt = np.zeros((B, T), np.int32)
    slen = np.zeros(B, np.int32)
    tlen = np.zeros(B, np.int32)
    for i, e in enumerate(examples):
        s, t = e.source, e.header + e.target
        src[i, : len(s)] = s
        tgt[i, : len(t)] = t
        slen[i], tlen[i] = len(s), len(t)
    return {"source": src, "target": tgt, "source_len": slen, "target_len": tlen}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="lookup", choices=["lookup", "word-map"])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=64, help="global batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None, help="HF tokenizer dir (default: the synthetic word-level one)")
    ap.add_argument("--cache-dir", default=None, help="tokenization cache dir (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from proactive_jax.data import synthetic
    from proactive_jax.data.pipeline import Pipeline, prepare_examples
    from proactive_jax.data.render import RenderConfig

    res: dict = {"task": args.task, "n": args.n, "global_batch": args.batch, "python": platform.python_version(),
                 "cpu_count": os.cpu_count(), "command": "python eval/bench_data.py " + " ".join(sys.argv[1:])}
    res["rss_start_mib"] = rss_mib()
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        res["tokenizer"] = args.tokenizer
    else:
        tok = synthetic.load_tokenizer()
        res["tokenizer"] = "synthetic word-level"
    cfg = RenderConfig()

    t = time.perf_counter()
    texts = synthetic.make_task(args.task, args.n, seed=args.seed, split="train")
    res["generate_s"] = time.perf_counter() - t
    res["generate_ex_per_s"] = args.n / res["generate_s"]
    res["rss_after_generate_mib"] = rss_mib()

    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="pj_bench_data_")
    key = f"bench:{args.task}:{args.n}:{args.seed}"
    t = time.perf_counter()
    prep = prepare_examples(texts, tok, cfg, dataset_key=key, cache_dir=cache_dir)
    res["tokenize_and_cache_s"] = time.perf_counter() - t
    res["tokenize_ex_per_s"] = args.n / res["tokenize_and_cache_s"]
    res["cache_file_mib"] = os.path.getsize(prep.cache_path) / 2**20
    res["tokens_total"] = int(sum(e.S + e.T for e in prep.examples))
    res["rss_after_tokenize_mib"] = rss_mib()
    del texts

    t = time.perf_counter()
    again = prepare_examples(lambda: [], tok, cfg, dataset_key=key, cache_dir=cache_dir)
    res["cache_reload_s"] = time.perf_counter() - t
    res["cache_reload_ex_per_s"] = args.n / res["cache_reload_s"]
    assert again.cache_hit and len(again.examples) == len(prep.examples)
    del again

    S = np.array([e.S for e in prep.examples])
    T = np.array([e.T for e in prep.examples])
    # two buckets: everything up to the median lengths, and the maxima
    buckets = sorted({(int(np.median(S)), int(np.median(T))), (int(S.max()), int(T.max()))})
    t = time.perf_counter()
    pipe = Pipeline(prep.examples, buckets, global_batch_size=args.batch, collate=pad_collate, seed=args.seed,
                    on_unfit="error")
    res["pipeline_build_s"] = time.perf_counter() - t
    res["buckets"] = pipe.buckets
    res["bucket_counts"] = pipe.bucket_counts.tolist()
    res["steps_per_epoch"] = pipe.steps_per_epoch

    t = time.perf_counter()
    shapes = set()
    rows = 0
    for b in pipe.batches_from(0, pipe.steps_per_epoch):
        shapes.add(b["source"].shape + b["target"].shape)
        rows += int(b["valid"].sum())
    res["batch_epoch_s"] = time.perf_counter() - t
    res["batch_ex_per_s"] = rows / res["batch_epoch_s"]
    res["distinct_shapes"] = len(shapes)
    res["rss_end_mib"] = rss_mib()
    res["peak_rss_mib"] = peak_rss_mib()
    out = json.dumps(res, indent=2, default=str)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out + "\n")
    return res


if __name__ == "__main__":
    main()
