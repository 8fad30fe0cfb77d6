"""``proactive-jax plan``: compile a run's train step (or the decode loop) for a TPU slice on this machine and
report its per-chip memory; exit 1 when it does not fit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (e.g. configs/qwen2.5-3b-iwslt-ende.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (as for train)")
    p.add_argument("--topology", required=True,
                   help="TPU slice: CHIP:GRID (v4:2x2x4, v5e:4x8, v5p:2x2x2, v6e:4x4) or an accelerator type "
                        "(v5litepod-32, v4-32)")
    p.add_argument("--headroom", type=float, default=0.0,
                   help="fraction of HBM to keep free for the verdict (e.g. 0.25); default 0")
    p.add_argument("--bucket", default=None, help="S,T bucket to plan (default: the run's largest)")
    p.add_argument("--max-batch", action="store_true",
                   help="also find the largest global batch that fits (a few more compiles)")
    p.add_argument("--decode", default=None, metavar="batch=16,src=288,tgt=64",
                   help="plan the streaming decode loop (what `eval` runs) instead of the train step; keys "
                        "batch, src, tgt, prompt, unit, header, units, head (training/plan_decode.py)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    from proactive_jax.cli import config_help

    p.epilog_fn = config_help("proactive_jax.training.run_config:RunConfig", note="the same keys as train")


def status_line(args) -> str:
    what = "the decode loop" if getattr(args, "decode", None) is not None else "its train step"
    return (f"loading {args.config}, then compiling {what} for {args.topology} on this machine (no TPU needed; "
            "tens of seconds for a small model, minutes for a large one) ...")


def _quiet_tpu_env() -> None:
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")  # quiets libtpu's host probing
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # only the compiler is used: plans may run side by side


class _Progress(logging.Handler):
    """The planner's log records are its progress ("compiled 32 rows, bucket (24, 24) in 13 s"): status lines
    (a terminal, or -v), not warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        from proactive_jax.cli.startup import status

        status("proactive-jax plan", record.getMessage())


def _progress_lines() -> None:
    for name in ("proactive_jax.training.plan", "proactive_jax.training.plan_decode"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Progress) for h in logger.handlers):
            logger.addHandler(_Progress(logging.INFO))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_plan(args: argparse.Namespace) -> int:
    from proactive_jax.training.plan import format_report
    from proactive_jax.training.plan import plan
    from proactive_jax.training.tpu import PlanError
    from proactive_jax.training.tpu import parse_topology

    _quiet_tpu_env()
    import jax

    jax.config.update("jax_platforms", "cpu")  # compile for TPU, run nothing: never probe for a local TPU
    from proactive_jax.errors import ConfigError
    from proactive_jax.training.run_config import load_run_config

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _progress_lines()
    try:
        run = load_run_config(args.config, args.overrides)
        topo = parse_topology(args.topology)
        if getattr(args, "decode", None) is not None:
            from proactive_jax.training.plan_decode import format_decode_report, parse_decode, plan_decode

            report = plan_decode(run, topo, parse_decode(args.decode, run), headroom=args.headroom)
            text = format_decode_report
        else:
            bucket = None if args.bucket is None else tuple(int(x) for x in args.bucket.split(","))
            report = plan(run, topo, headroom=args.headroom, bucket=bucket, search_batch=args.max_batch)
            text = format_report
    except (PlanError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"proactive-jax plan: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else text(report))
    return 0 if report["fits"] else 1
