"""``proactive-jax train``: train a streaming LLM from a YAML run config (argument parsing and exit codes only)."""

from __future__ import annotations

import argparse
import json
import signal
from typing import Sequence

from proactive_jax.cli import run_guarded
from proactive_jax.cli.logs import setup_logging


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (e.g. configs/tiny-synthetic.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, YAML-typed (e.g. steps=200 out_dir=runs/x mesh.fsdp=4)")
    from proactive_jax.cli import config_help

    p.epilog_fn = config_help("proactive_jax.training.run_config:RunConfig",
                              note="every section: configs/tiny-synthetic.yaml")


def status_line(args) -> str:
    from proactive_jax.cli.startup import peek_config

    raw = peek_config(args.config, args.overrides)
    out = raw.get("out_dir", "runs/run")
    return f"loading {args.config} (JAX, then the model and the data; the run goes to {out}) ..."


def run_train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done or stopped by SIGTERM (checkpoint saved), 130 stopped by Ctrl-C (saved), 2 a user
    error (one line on stderr, from ``cli.run_guarded``), 3 the loss diverged."""
    from proactive_jax.training.loop import train
    from proactive_jax.training.run_config import load_run_config
    import jax

    setup_logging()
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
