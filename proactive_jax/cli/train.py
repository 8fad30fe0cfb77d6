"""``proactive-jax train`` and ``proactive-jax export`` (argument parsing and exit codes only)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from typing import Sequence

import jax

from proactive_jax.cli import run_guarded
from proactive_jax.training.checkpoint import export
from proactive_jax.training.loop import train
from proactive_jax.training.run_config import load_run_config

log = logging.getLogger(__name__)


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (e.g. configs/tiny-synthetic.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, YAML-typed (e.g. steps=200 out_dir=runs/x mesh.fsdp=4)")


class _NoTraceback(logging.Filter):
    """Library log records keep their message but lose the traceback: a failed background save is reported
    once, as one line, by the error that stops the run (orbax logs the same failure from several threads)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} [{type(exc).__name__}: {exc}]"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "etils"):
        logger = logging.getLogger(noisy)
        logger.setLevel(logging.WARNING)
        if not any(isinstance(f, _NoTraceback) for f in logger.filters):
            logger.addFilter(_NoTraceback())


def run_train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done or stopped by SIGTERM (checkpoint saved), 130 stopped by Ctrl-C (saved), 2 a user
    error (one line on stderr, from ``cli.run_guarded``), 3 the loss diverged."""
    _setup_logging()
    cfg = load_run_config(args.config, args.overrides)
    res = train(cfg)
    if jax.process_index() == 0:
        last = res.history[-1] if res.history else {}
        print(json.dumps({"out_dir": str(res.out_dir), "step": res.step, "stopped": res.stopped,
                          "loss": last.get("loss"), "eval": res.evals[-1] if res.evals else None}))
    return 130 if res.signum == signal.SIGINT else 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``proactive-jax train CONFIG [key=value ...]``."""
    p = argparse.ArgumentParser(prog="proactive-jax train", description="train a streaming LLM (MSLM + SPSD)")
    add_train_args(p)
    args = p.parse_args(argv)
    return run_guarded("proactive-jax train", lambda: run_train(args))


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory (or its checkpoints/ directory)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="stored dtype of the weights (default float32)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: the run's)")
    p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size")


def run_export(args: argparse.Namespace) -> int:
    _setup_logging()
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


