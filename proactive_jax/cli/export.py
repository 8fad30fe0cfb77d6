"""``proactive-jax export``: write a training run's checkpoint as a Hugging Face directory."""

from __future__ import annotations

import argparse
from typing import Sequence

from proactive_jax.cli import run_guarded
from proactive_jax.cli.logs import setup_logging


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory (or its checkpoints/ directory)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="stored dtype of the weights (default float32)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: the run's)")
    p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size")


def status_line(args: argparse.Namespace) -> str:
    step = "the latest step" if args.step is None else f"step {args.step}"
    return f"loading {args.checkpoint} ({step}) to write {args.out} ..."


def run_export(args: argparse.Namespace) -> int:
    from proactive_jax.training.checkpoint import export

    setup_logging()
    out = export(args.checkpoint, args.step, args.out, dtype=args.dtype, tokenizer_dir=args.tokenizer,
                 max_shard_size=args.max_shard_size)
    print(out)
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """``proactive-jax export --checkpoint RUN_DIR [--step N] --out HF_DIR``."""
    p = argparse.ArgumentParser(prog="proactive-jax export", description="write a checkpoint as a HF directory")
    add_export_args(p)
    args = p.parse_args(argv)
    return run_guarded("proactive-jax export", lambda: run_export(args))
