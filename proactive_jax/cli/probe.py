"""``proactive-jax probe train``: fit the learned decision head's probe on a trained run (backbone frozen)."""

from __future__ import annotations

import sys


def add_probe_args(p) -> None:
    p.add_argument("action", choices=("train",), help="train: fit the probe on a trained run")
    p.add_argument("config", nargs="?", default=None, help="probe config YAML (optional)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. checkpoint=runs/x task=lookup")
    from proactive_jax.cli import config_help

    p.epilog_fn = config_help("proactive_jax.training.probe_training:ProbeConfig")


def status_line(args) -> str:
    from proactive_jax.cli.startup import peek_config

    raw = peek_config(args.config, args.overrides)
    ckpt = raw.get("checkpoint")
    what = f"{raw.get('labels', 'self')} labels, {raw.get('task', 'lookup')}"
    return f"loading {ckpt} to fit its probe ({what}) ..." if ckpt else "reading the probe config ..."


def run_probe_cli(args) -> int:
    from proactive_jax.training.probe_training import ProbeConfig
    from proactive_jax.training.probe_training import run_probe_train

    from proactive_jax.config import config_and_overrides, load_config
    from proactive_jax.errors import ConfigError
    from proactive_jax.method.probe import ProbeError

    path, overrides = config_and_overrides(args.config, args.overrides)
    try:
        cfg = load_config(ProbeConfig, path, overrides)
        out = run_probe_train(cfg)
    except (ProbeError, ConfigError, FileNotFoundError, ValueError) as e:
        print(f"proactive-jax probe: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
