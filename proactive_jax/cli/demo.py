"""``proactive-jax demo``: the embedded default (tiny streaming models trained on built-in tasks, the heads
evaluated, the paper-style tables printed)."""

from __future__ import annotations

import sys


def add_demo_args(p) -> None:
    p.add_argument("--config", default=None, help="demo config YAML (default: configs/demo.yaml values built in)")
    p.add_argument("--out", default=None, help="output directory (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="the quick start: text stages only, smaller (about 3 min on "
                   "2 cores), enough to learn both tasks")
    p.add_argument("--smoke", action="store_true", help="every stage (text and speech) on the smallest shapes, a few "
                   "steps each (under a minute): checks that everything runs, learns nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. finetune_steps=300")
    from proactive_jax.cli import config_help

    p.epilog_fn = config_help("proactive_jax.demo.text:DemoConfig", expand={"speech": "proactive_jax.demo.speech:"
                                                                             "SpeechDemoConfig"},
                              note="defaults: configs/demo.yaml")


def status_line(args) -> str:
    from proactive_jax.cli.startup import peek_config

    out = args.out or peek_config(args.config, args.overrides).get("out_dir", "demo_out")
    how = ("--quick: text tasks only, about 3 min" if args.quick else
           "--smoke: every stage on the smallest shapes, under a minute" if getattr(args, "smoke", False) else
           "text and speech, about 10 min")
    return f"loading JAX; then tiny models are trained and evaluated on built-in tasks ({how}) into {out} ..."


def run_demo_cli(args) -> int:
    from proactive_jax.demo.text import load_demo_config
    from proactive_jax.demo.text import run_demo
    from proactive_jax.errors import ConfigError

    overrides = list(args.overrides) + ([f"out_dir={args.out}"] if args.out else [])
    if args.smoke:
        fast_compile()
    try:
        cfg = load_demo_config(args.config, overrides, quick=args.quick, smoke=args.smoke)
    except (ConfigError, FileNotFoundError) as e:
        print(f"proactive-jax demo: {e}", file=sys.stderr)
        return 2
    run_demo(cfg)
    return 0


FAST_COMPILE = "--xla_backend_optimization_level=0"


def fast_compile() -> None:
    """``--smoke`` checks that every stage runs, not how fast the programs are: XLA's CPU backend compiles them
    without optimisation (about half the compile time; the speech stage's process inherits it). Set before JAX
    starts its backend, which reads ``XLA_FLAGS`` then."""
    import os

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + FAST_COMPILE).strip()
