"""``proactive-jax`` command line.

Each subcommand is one entry of :data:`COMMANDS`: ``name -> Command(help, add_args, run, status, style)``.
``add_args`` fills an argparse subparser (cheap; no heavy imports); ``run`` is a callable or a ``"module:function"``
string imported only when that subcommand runs, so ``proactive-jax --help`` stays fast. ``run(args)`` returns the
exit code. ``status(args)`` is the command's first status line, printed before anything heavy is imported;
``style`` says how the command takes its settings: ``"config"`` (``key=value``; ``--key value`` is read as
``key=value`` with a notice) or ``"flags"`` (``--flags``; ``key=value`` naming an option is read as that option).
Global flags (before or after the command): ``-v/--verbose`` (third-party warnings and status lines back on),
``--no-compile-cache``. What runs before every command (status lines, the compilation cache, quiet logs) is
:mod:`proactive_jax.cli.startup`. To add a subcommand, add one entry.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import Callable, NamedTuple, Sequence

from proactive_jax.cli import startup


class Command(NamedTuple):
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: str | Callable[[argparse.Namespace], int]
    status: str | Callable[[argparse.Namespace], str] | None = None  # the first status line
    style: str = "plain"  # "config" | "flags" | "plain" (see the module docstring)
    compiles: bool = True  # runs JAX programs (the compile-time status lines are watched)


class HelpParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose epilog is computed only when help is shown (``epilog_fn``: e.g. the config
    keys, which need the config dataclasses and so JAX); ``print_help`` writes the usage at once and the epilog
    after it is built."""

    epilog_fn: Callable[[], str] | None = None

    def _epilog_text(self) -> str:
        return self.epilog_fn() if self.epilog_fn is not None else ""

    def format_help(self) -> str:
        text = super().format_help()
        extra = self._epilog_text()
        return text + ("\n" + extra + "\n" if extra else "")

    def print_help(self, file=None) -> None:
        file = file or sys.stdout
        file.write(super().format_help())
        file.flush()
        extra = self._epilog_text()
        if extra:
            file.write("\n" + extra + "\n")


def config_help(target: str, *, expand: dict[str, str] | None = None, note: str = "") -> Callable[[], str]:
    """An ``epilog_fn`` listing every key of the config dataclass ``"module:Class"`` (type, default, doc)."""
    def text() -> str:
        from proactive_jax.config import format_fields

        cls = _resolve(target)
        title = (f"config keys ({cls.__name__}; in the YAML file or as key=value, values read as YAML, nested keys "
                 f"dotted{'; ' + note if note else ''}):")
        return format_fields(cls, title=title, expand={k: _resolve(v) for k, v in (expand or {}).items()})
    return text


def add_global_flags(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """``-v/--verbose`` and ``--no-compile-cache``, on the main parser and (``suppress``: no default, so the
    main parser's value stays) on every subcommand."""
    kw = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("-v", "--verbose", action="store_true", help="show third-party warnings and logs (quiet by "
                   "default) and the status lines also when stderr is not a terminal", **kw)
    p.add_argument("--no-compile-cache", action="store_true", help="do not use the persistent JAX compilation "
                   f"cache (default: ${startup.CACHE_ENV} or ~/.cache/proactive_jax/jax; "
                   f"{startup.CACHE_ENV}=off disables it)", **kw)


# ---------------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------------

def _lazy_args(module: str, fn: str) -> Callable[[argparse.ArgumentParser], None]:
    return lambda p: getattr(importlib.import_module(module), fn)(p)


def _cli(module: str, fn: str) -> str:
    return f"proactive_jax.cli.{module}:{fn}"


COMMANDS: dict[str, Command] = {
    "demo": Command("the embedded default: train a tiny streaming model on built-in tasks, evaluate the heads, "
                    "print the paper-style table", _lazy_args("proactive_jax.cli.demo", "add_demo_args"),
                    _cli("demo", "run_demo_cli"), _cli("demo", "status_line"), "config"),
    "study": Command("the study grid on unsaturated tasks: seeds, 95-percent intervals and one verdict per paper claim "
                     "(results.json, report.md, plots; resumable)", _lazy_args("proactive_jax.cli.study",
                                                                                "add_study_args"),
                     _cli("study", "run_study_cli"), _cli("study", "status_line"), "config"),
    "train": Command("train a streaming LLM (batch + MSLM + SPSD) from a YAML run config",
                     _lazy_args("proactive_jax.cli.train", "add_train_args"), _cli("train", "run_train"),
                     _cli("train", "status_line"), "config"),
    "export": Command("write a training run's checkpoint as a Hugging Face directory",
                      _lazy_args("proactive_jax.cli.export", "add_export_args"), _cli("export", "run_export"),
                      _cli("export", "status_line"), "flags"),
    "decode": Command("stream one text through a checkpoint with a decision head; show READs and WRITEs",
                      _lazy_args("proactive_jax.cli.decode", "add_decode_args"), _cli("decode", "run_decode_cli"),
                      _cli("decode", "status_line"), "flags"),
    "eval": Command("evaluate decision heads with threshold sweeps: results.json, table, plots",
                    _lazy_args("proactive_jax.cli.eval", "add_eval_args"), _cli("eval", "run_eval_cli"),
                    _cli("eval", "status_line"), "config"),
    "probe": Command("train the learned decision head's probe on a trained run (self-labels or oracle labels)",
                     _lazy_args("proactive_jax.cli.probe", "add_probe_args"), _cli("probe", "run_probe_cli"),
                     _cli("probe", "status_line"), "config"),
    "plan": Command("compile a run's train step for a TPU slice (no TPU, weights or data needed) and report its "
                    "per-chip memory", _lazy_args("proactive_jax.cli.plan", "add_plan_args"),
                    _cli("plan", "run_plan"), _cli("plan", "status_line"), "config", compiles=False),
    "prepare-audio": Command("copy audio rows (a datasets / tfds split or a WAV + JSONL manifest) once into ArrayRecord "
                             "shards for the bounded-memory training stream (audio.stream.dir)",
                             _lazy_args("proactive_jax.cli.prepare_audio", "add_prepare_audio_args"),
                             _cli("prepare_audio", "run_prepare_audio"), _cli("prepare_audio", "status_line"),
                             "plain", compiles=False),
    "reproduce": Command("reproduce the paper's tables cell by cell (plan -> train -> export -> eval -> table, the "
                         "paper's numbers beside ours); --dry-run: tiny stand-ins on local fixtures",
                         _lazy_args("proactive_jax.cli.reproduce", "add_reproduce_args"),
                         _cli("reproduce", "run_reproduce"),
                         lambda args: "reading the recipe (configs/reproduce.yaml) ...", "flags"),
    "hf-check": Command("compare this package's logits with transformers on a local HF checkpoint",
                        _lazy_args("proactive_jax.cli.hf_check", "add_hf_check_args"),
                        _cli("hf_check", "run_hf_check"), _cli("hf_check", "status_line"), "plain"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = HelpParser(prog="proactive-jax", description="ProactiveLLM streaming LLMs in JAX/Flax.")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        add_global_flags(p, suppress=True)
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _status_line(cmd: Command, args: argparse.Namespace) -> str:
    try:
        return _resolve(cmd.status)(args)
    except Exception:  # noqa: BLE001 - a status line never stops a command
        return "starting ..."


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
    """Parse, then before the command runs: the other style's spelling rewritten (one notice), the verbosity,
    the command's first status line, the compilation cache (and its status line for long compiles)."""
    _quiet_closed_loop_errors()
    from_command_line = argv is None
    parser = build_parser()
    subs = subparsers(parser)
    argv, _, notice = startup.normalize_argv(sys.argv[1:] if argv is None else argv,
                                             {n: c.style for n, c in COMMANDS.items()},
                                             lambda n: subs[n]._option_string_actions)
    args = parser.parse_args(argv)
    prog = f"proactive-jax {args.command}"
    cmd = COMMANDS[args.command]
    startup.set_verbosity(args.verbose)
    if from_command_line:
        startup.choose_platforms()
    if notice:
        print(f"{prog}: {one_line(notice)}", file=sys.stderr, flush=True)
    if cmd.status is not None and startup.status_enabled():
        startup.status(prog, _status_line(cmd, args))
    # the process-wide JAX cache setting belongs to the command line; a program calling main([...]) (the tests)
    # gets it only by setting $PROACTIVE_JAX_CACHE, and leaves JAX's configuration as it is otherwise
    cache = None
    if args.no_compile_cache or from_command_line or startup.CACHE_ENV in os.environ:
        cache = startup.configure_compile_cache(enabled=not args.no_compile_cache)
    if cmd.compiles and startup.status_enabled():
        startup.watch_compiles(prog, cache)
    run = _resolve(cmd.run)
    return run_guarded(prog, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
