"""Overlay several results.json files (same task) in one quality-latency plot.

    python eval/plot_results.py A/results.json B/results.json [--labels a b] --out plot.png
"""
import argparse
from pathlib import Path

from proactive_jax.evaluation.results import load_results, plot_quality_latency


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", nargs="+", help="results.json files or eval directories")
    ap.add_argument("--labels", nargs="*", default=None, help="one label per file (default: parent dir names)")
    ap.add_argument("--out", required=True, help="PNG path")
    args = ap.parse_args(argv)
    first = load_results(args.results[0])
    runs = [first] + [load_results(p, task=first["task"]) for p in args.results[1:]]
    labels = args.labels or [Path(p).resolve().parent.name if p.endswith(".json") else Path(p).name
                             for p in args.results]
    if len(labels) != len(runs):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(runs)} results files")
    plot_quality_latency(runs, args.out, task=first["task"], labels=labels)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
