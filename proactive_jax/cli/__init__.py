"""``proactive-jax`` command line.

Each subcommand is one entry of :data:`COMMANDS`: ``name -> Command(help, add_args, run)``. ``add_args``
fills an argparse subparser (cheap; no heavy imports); ``run`` is a callable or a ``"module:function"``
string imported only when that subcommand runs, so ``proactive-jax --help`` stays fast. ``run(args)``
returns the exit code. To add a subcommand (train, export, decode, eval, demo), add one entry.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import Callable, NamedTuple, Sequence


class Command(NamedTuple):
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: str | Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------------

def _lazy_args(module: str, fn: str) -> Callable[[argparse.ArgumentParser], None]:
    return lambda p: getattr(importlib.import_module(module), fn)(p)


COMMANDS: dict[str, Command] = {
    "demo": Command("the embedded default: train a tiny streaming model on built-in tasks, evaluate the heads, "
                    "print the paper-style table", _lazy_args("proactive_jax.cli.demo", "add_demo_args"),
                    "proactive_jax.cli.demo:run_demo_cli"),
    "train": Command("train a streaming LLM (batch + MSLM + SPSD) from a YAML run config",
                     _lazy_args("proactive_jax.cli.train", "add_train_args"), "proactive_jax.cli.train:run_train"),
    "export": Command("write a training run's checkpoint as a Hugging Face directory",
                      _lazy_args("proactive_jax.cli.export", "add_export_args"), "proactive_jax.cli.export:run_export"),
    "decode": Command("stream one text through a checkpoint with a decision head; show READs and WRITEs",
                      _lazy_args("proactive_jax.cli.decode", "add_decode_args"),
                      "proactive_jax.cli.decode:run_decode_cli"),
    "eval": Command("evaluate decision heads with threshold sweeps: results.json, table, plots",
                    _lazy_args("proactive_jax.cli.eval", "add_eval_args"), "proactive_jax.cli.eval:run_eval_cli"),
    "probe": Command("train the learned decision head's probe on a trained run (self-labels or oracle labels)",
                     _lazy_args("proactive_jax.cli.probe", "add_probe_args"),
                     "proactive_jax.cli.probe:run_probe_cli"),
    "plan": Command("compile a run's train step for a TPU slice (no TPU, weights or data needed) and report its "
                    "per-chip memory", _lazy_args("proactive_jax.cli.plan", "add_plan_args"),
                    "proactive_jax.cli.plan:run_plan"),
    "prepare-audio": Command("copy audio rows (a datasets / tfds split or a WAV + JSONL manifest) once into ArrayRecord "
                             "shards for the bounded-memory training stream (audio.stream.dir)",
                             _lazy_args("proactive_jax.cli.prepare_audio", "add_prepare_audio_args"),
                             "proactive_jax.cli.prepare_audio:run_prepare_audio"),
    "hf-check": Command("compare this package's logits with transformers on a local HF checkpoint",
                        _lazy_args("proactive_jax.cli.hf_check", "add_hf_check_args"),
                        "proactive_jax.cli.hf_check:run_hf_check"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proactive-jax",
                                     description="ProactiveLLM streaming LLMs in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
    return parser


def _resolve(run: str | Callable) -> Callable:
    if callable(run):
        return run
    module, _, attr = run.partition(":")
    return getattr(importlib.import_module(module), attr)


# errno values that a user causes (a path, a permission, a full disk): one line, not a traceback
USER_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                         errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                         errno.EMFILE, errno.EXDEV})


# raised by this package with a message (no errno) for a path the user gave
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(msg: object, limit: int = 2000) -> str:
    """A message on one line (whitespace runs collapsed), at most ``limit`` characters."""
    text = " ".join(str(msg).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_os_error(e: OSError) -> str:
    """``<path>: <what> (<hint>)`` for an OS error a user causes."""
    if e.errno is None:  # raised here with its own message
        return str(e)
    what = e.strerror or str(e)
    where = e.filename if e.filename is not None else ""
    hint = {errno.ENOSPC: "free disk space or choose another out_dir; completed checkpoints and outputs are intact",
            errno.EDQUOT: "disk quota exceeded; free space or choose another out_dir",
            errno.EACCES: "check the permissions of this path or choose another directory",
            errno.EPERM: "check the permissions of this path or choose another directory",
            errno.EROFS: "the file system is read-only; choose another directory"}.get(e.errno)
    text = f"{where}: {what}" if where else what
    return text + (f" ({hint})" if hint else "")


def run_guarded(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; a :class:`~proactive_jax.errors.ProactiveError`, an OS error the user caused or Ctrl-C
    becomes one line on stderr and an exit code (2; ``TrainingDiverged`` 3; Ctrl-C 130). Anything else is
    a bug and keeps its traceback. The one place where the CLI turns errors into exit codes."""
    from proactive_jax.errors import ProactiveError

    try:
        return int(fn() or 0)
    except ProactiveError as e:
        _silence_background_logs()
        print(f"{prog}: {one_line(e)}", file=sys.stderr)
        return int(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        _silence_background_logs()
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in USER_ERRNOS and not isinstance(e, _USER_OS_ERRORS):
            raise
        _silence_background_logs()
        print(f"{prog}: {one_line(describe_os_error(e))}", file=sys.stderr)
        return 2


def _silence_background_logs() -> None:
    """The command has failed; the checkpoint library's threads may still log their side of the same failure
    while the process shuts down. The error line is the last word."""
    import logging

    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_closed_loop_errors() -> None:
    """Orbax's async writes bridge tensorstore callbacks into an asyncio loop; after a failed save the loop is
    closed and every late callback reports ``RuntimeError: Event loop is closed`` as an unraisable exception
    (hundreds of tracebacks). Those, and only those, are dropped; the save failure itself is reported."""
    prev = sys.unraisablehook
    if getattr(prev, "_proactive_quiet", False):
        return

    def hook(unraisable):
        v = unraisable.exc_value
        if isinstance(v, RuntimeError) and str(v) == "Event loop is closed":
            return
        prev(unraisable)

    hook._proactive_quiet = True
    sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_closed_loop_errors()
    args = build_parser().parse_args(argv)
    run = _resolve(COMMANDS[args.command].run)
    return run_guarded(f"proactive-jax {args.command}", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
