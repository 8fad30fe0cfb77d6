"""What every ``proactive-jax`` command does before its own work: the status lines, the persistent JAX compilation
cache, quiet third-party logs (``-v`` brings them back) and the one argument style per command.

Nothing here imports JAX at module level: ``proactive-jax COMMAND`` prints its first line before any heavy import.

- **Status lines** go to stderr when it is a terminal (or with ``-v``): the command's first line within a second
  of start, and ``compiling <program> (...)`` when an XLA compilation has run for a second. Scripts and logs that
  capture stderr keep the one-line error contract (a failing command prints exactly one line).
- **Compilation cache**: ``$PROACTIVE_JAX_CACHE`` (default ``$XDG_CACHE_HOME/proactive_jax/jax``, i.e.
  ``~/.cache/proactive_jax/jax``; ``off`` disables it), programs that took >= 1 s to compile are kept there, so a
  second run of the same command skips their compilation. A cache configured through JAX's own
  ``JAX_COMPILATION_CACHE_DIR`` is used as it is. ``--no-compile-cache`` turns every cache off for the run. The
  command line sets it (``proactive-jax``, ``python -m proactive_jax``); ``cli.main([...])`` called from Python
  (the tests) only when ``$PROACTIVE_JAX_CACHE`` is set, so it does not change JAX's configuration behind a caller.
- **Quiet**: third-party loggers (absl, orbax, jax, transformers, ...) show errors only and their Python warnings
  are dropped; this package's own warnings (things the user can act on) always show.
- **Argument style**: config commands (train, eval, probe, plan, demo) take ``key=value``; ``--key value`` /
  ``--key=value`` for a config key is read as ``key=value`` with a one-line notice. Flag commands (decode,
  export) take ``--flags``; ``key=value`` naming one of their options is read as ``--key=value`` with a notice.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

CACHE_ENV = "PROACTIVE_JAX_CACHE"
OFF_VALUES = ("", "0", "off", "none", "false", "no")
MIN_COMPILE_SECS = "1.0"  # programs that compile faster are not worth a cache entry
MAX_CACHE_BYTES = str(2 << 30)  # LRU eviction past 2 GiB (also serialises concurrent writers with a file lock)
NOTICE_AFTER_S = 1.0  # a compilation running this long gets a status line

_state = {"verbose": False, "status": False}


# ---------------------------------------------------------------------------------------------
# status lines
# ---------------------------------------------------------------------------------------------

def status_enabled() -> bool:
    return bool(_state["status"])


def verbose() -> bool:
    return bool(_state["verbose"])


def status(prog: str, msg: str) -> None:
    """``<prog>: <msg>`` on stderr when status lines are on (stderr a terminal, or ``-v``)."""
    if not _state["status"]:
        return
    line = f"{prog}: {msg}"
    bars = getattr(sys.modules.get("tqdm", None), "tqdm", None)
    if bars is not None and getattr(bars, "_instances", None):  # a progress bar is on screen: print above it
        bars.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _short_path(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home):] if home != "/" and (path == home or path.startswith(home + os.sep)) else path


def peek_config(path: str | None, overrides: Sequence[str]) -> dict:
    """The raw config (YAML file + overrides, not validated; ``{}`` if it cannot be read): for status lines only."""
    from proactive_jax.config import apply_overrides, config_and_overrides, read_yaml

    try:
        path, overrides = config_and_overrides(path, overrides)
        return apply_overrides(read_yaml(path) if path else {}, overrides)
    except Exception:  # noqa: BLE001 - the command reports a bad config itself, with its error
        return {}


# ---------------------------------------------------------------------------------------------
# verbosity
# ---------------------------------------------------------------------------------------------

THIRD_PARTY = ("absl", "orbax", "jax", "jaxlib", "flax", "optax", "etils", "tensorstore", "transformers",
               "datasets", "tensorflow", "tensorflow_datasets", "grain", "array_record", "huggingface_hub", "torch",
               "urllib3", "fsspec", "filelock", "matplotlib", "PIL", "libtpu")
# kept at WARNING when quiet: what they say is actionable (e.g. "a GPU is present but this jaxlib is CPU-only")
ACTIONABLE = ("jax._src.xla_bridge",)
_WARNINGS_RE = r"(" + "|".join(re.escape(m) for m in THIRD_PARTY) + r")(\..*)?$"


def choose_platforms() -> str | None:
    """On a machine with no TPU device (neither ``/dev/accel*`` nor ``/dev/vfio/<n>``) and no NVIDIA device, run JAX on
    the CPU (``JAX_PLATFORMS=cpu``) unless the user chose platforms: otherwise the ``tpu`` extra's libtpu probes for a
    TPU on every command and prints several lines of host-bounds warnings. ``plan`` compiles for TPU through the
    topology API, which does not need the TPU platform. Returns what it set, or None."""
    if "JAX_PLATFORMS" in os.environ:
        return None
    dev = Path("/dev")
    tpu = any(dev.glob("accel*")) or any(p.name.isdigit() for p in (dev / "vfio").glob("*"))
    gpu = any(dev.glob("nvidia[0-9]*"))
    if tpu or gpu:
        return None
    os.environ["JAX_PLATFORMS"] = "cpu"
    return "cpu"


def set_verbosity(verbose_: bool, status_: bool | None = None) -> None:
    """Quiet (default): third-party loggers at ERROR and their Python warnings dropped (this package's own
    warnings stay). ``verbose_``: third-party loggers at WARNING and warnings shown, status lines always on."""
    import logging
    import warnings

    _state["verbose"] = bool(verbose_)
    _state["status"] = bool(verbose_) or (status_ if status_ is not None else _isatty(sys.stderr))
    level = logging.WARNING if verbose_ else logging.ERROR
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(level)
    for name in ACTIONABLE:
        logging.getLogger(name).setLevel(logging.WARNING)
    if verbose_:
        return
    warnings.filterwarnings("ignore", module=_WARNINGS_RE)
    for var, value in (("TF_CPP_MIN_LOG_LEVEL", "2"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("DATASETS_VERBOSITY", "error"), ("GRPC_VERBOSITY", "ERROR")):
        os.environ.setdefault(var, value)  # libraries not imported yet read these when they are


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# the persistent compilation cache
# ---------------------------------------------------------------------------------------------

def default_cache_dir() -> str | None:
    """``$PROACTIVE_JAX_CACHE`` (``off``: None), else ``$XDG_CACHE_HOME/proactive_jax/jax`` (``~/.cache/...``)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in OFF_VALUES else str(Path(value).expanduser())
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "proactive_jax" / "jax")


def configure_compile_cache(enabled: bool = True) -> str | None:
    """Turn JAX's persistent compilation cache on (once per process, before any command runs); the directory in
    use, or None when off. A cache the user configured for JAX (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``) is left as it is. Set through the environment (JAX reads it on import; child processes such
    as the demo's speech stage inherit it) and, when JAX is already imported, through ``jax.config``.
    ``enabled=False`` (``--no-compile-cache``) disables every persistent cache for this run."""
    jax = sys.modules.get("jax")
    if not enabled:
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        if jax is not None:
            jax.config.update("jax_enable_compilation_cache", False)
        return None
    configured = os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
        getattr(jax.config, "jax_compilation_cache_dir", None) if jax is not None else None)
    if configured:
        return str(configured)
    path = default_cache_dir()
    if path is None:
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"proactive-jax: compilation cache off ({path}: {e.strerror or e}; set {CACHE_ENV}=DIR or off)",
              file=sys.stderr)
        return None
    settings = {"JAX_COMPILATION_CACHE_DIR": path,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", MIN_COMPILE_SECS)}
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and _have("filelock"):
        settings["JAX_COMPILATION_CACHE_MAX_SIZE"] = MAX_CACHE_BYTES
    os.environ.update(settings)
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          float(settings["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
        if "JAX_COMPILATION_CACHE_MAX_SIZE" in settings:
            jax.config.update("jax_compilation_cache_max_size", int(settings["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    return path


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------
# "compiling the decode loop (...)": a status line for a compilation that takes a while
# ---------------------------------------------------------------------------------------------

PROGRAM_NAMES = {"_decode_impl": "the decode loop", "step_fn": "the train step", "decision_step": "a session step",
                 "advance": "a session step", "_forward_fn": "the forward pass", "encode_window": "the audio encoder",
                 "chunk_step": "the audio chunk encoder",
                 "dual_view_states": "the labelling pass (stream and full views)"}
ESTIMATES_FILE = "proactive_jax_compile_seconds.json"


def program_name(fun_name: str) -> str:
    """``jit(_decode_impl)`` / ``jit__decode_impl`` -> "the decode loop"; unnamed programs -> "a JAX program"."""
    m = re.fullmatch(r"(?:jit|pjit|pmap)(?:\((.*)\)|_(.*))", str(fun_name))
    base = (m.group(1) or m.group(2)) if m else str(fun_name)
    if base in PROGRAM_NAMES:
        return PROGRAM_NAMES[base]
    return "a JAX program" if base.startswith("<") or not base else f"`{base}`"


class CompileNotice:
    """Listens to JAX's compile events: a compilation still running after ``NOTICE_AFTER_S`` prints one status
    line (once per program), with the time it took here last time when known."""

    def __init__(self):
        self.prog, self.cache_dir = "proactive-jax", None
        self.lock = threading.Lock()
        self.timers: dict[str, threading.Timer] = {}
        self.shown: set[str] = set()

    def reset(self, prog: str, cache_dir: str | None) -> None:
        with self.lock:
            self.prog, self.cache_dir, self.shown = prog, cache_dir, set()

    def on_start(self, event: str, value, **kw) -> None:
        if not event.endswith("backend_compile_duration") or not _state["status"]:
            return
        name = str(kw.get("fun_name", "?"))
        with self.lock:
            if name in self.shown or name in self.timers:
                return
            t = threading.Timer(NOTICE_AFTER_S, self._say, (name,))
            t.daemon = True
            self.timers[name] = t
        t.start()

    def on_end(self, event: str, seconds: float, **kw) -> None:
        if not event.endswith("backend_compile_duration"):
            return
        name = str(kw.get("fun_name", "?"))
        with self.lock:
            t = self.timers.pop(name, None)
        if t is not None:
            t.cancel()
        if seconds >= NOTICE_AFTER_S and self.cache_dir:
            self._remember(f"{self.prog} {name}", seconds)

    def _say(self, name: str) -> None:
        with self.lock:
            if name in self.shown:
                return
            self.shown.add(name)
            cache = self.cache_dir
        if cache:
            last = self._estimates().get(f"{self.prog} {name}")
            about = f", about {last:.0f} s last time" if last else ""
            where = f"later runs reuse the compilation cache at {_short_path(cache)}"
            status(self.prog, f"compiling {program_name(name)} (the first run compiles{about}; {where})")
        else:
            status(self.prog, f"compiling {program_name(name)} (the compilation cache is off: every run compiles)")

    def _estimates(self) -> dict:
        try:
            return json.loads((Path(self.cache_dir) / ESTIMATES_FILE).read_text())
        except (OSError, ValueError, TypeError):
            return {}

    def _remember(self, name: str, seconds: float) -> None:
        est = self._estimates()
        est[name] = round(float(seconds), 1)
        path = Path(self.cache_dir) / ESTIMATES_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(est, indent=0, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass


_notice: CompileNotice | None = None


def watch_compiles(prog: str, cache_dir: str | None) -> None:
    """Register :class:`CompileNotice` with ``jax.monitoring`` (imports JAX; once per process)."""
    global _notice
    if _notice is None:
        import jax.monitoring as mon

        if not (hasattr(mon, "register_scalar_listener") and hasattr(mon, "register_event_duration_secs_listener")):
            return
        _notice = CompileNotice()
        mon.register_scalar_listener(_notice.on_start)
        mon.register_event_duration_secs_listener(_notice.on_end)
    _notice.reset(prog, cache_dir)


# ---------------------------------------------------------------------------------------------
# one argument style per command
# ---------------------------------------------------------------------------------------------

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\-]*=")
_TRUE, _FALSE = ("true", "yes", "on", "1", ""), ("false", "no", "off", "0")


def _known(tok: str, options: dict) -> argparse.Action | None:
    """The action of option ``tok`` (``--opt`` or ``--opt=value``; an unambiguous prefix counts, as in argparse)."""
    name = tok.split("=", 1)[0]
    if name in options:
        return options[name]
    hits = {id(a): a for o, a in options.items() if o.startswith("--") and o.startswith(name) and len(name) > 2}
    return next(iter(hits.values())) if len(hits) == 1 else None


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def flags_to_overrides(rest: Sequence[str], options: dict) -> tuple[list[str], list[str]]:
    """Config-command arguments: ``--key value`` / ``--key=value`` / ``--key`` (true) that are not options of the
    command become ``key=value`` (dashes to underscores). The command's own options go first, then the
    positionals, then the converted overrides (argparse does not take positionals on both sides of an option,
    and a positional CONFIG stays first). ``(arguments, converted overrides)``."""
    opts, out, converted, rest, j = [], [], [], list(rest), 0
    while j < len(rest):
        tok = rest[j]
        if tok == "--":
            out.extend(rest[j:])
            break
        action = _known(tok, options) if tok.startswith("-") else None
        if action is not None:
            opts.append(tok)
            if "=" not in tok and _takes_value(action) and j + 1 < len(rest):
                opts.append(rest[j + 1])
                j += 1
        elif tok.startswith("--") and len(tok) > 2 and not tok[2:].startswith("-"):
            name, eq, value = tok[2:].partition("=")
            if not eq:
                nxt = rest[j + 1] if j + 1 < len(rest) else None
                if nxt is not None and _is_value(nxt, options):
                    value, j = nxt, j + 1
                else:
                    value = "true"
            converted.append(f"{name.replace('-', '_')}={value}")
        else:
            out.append(tok)
        j += 1
    if not converted:
        return list(rest), converted
    return opts + out + converted, converted


def _is_value(tok: str, options: dict) -> bool:
    if tok.startswith("--") or _OVERRIDE.match(tok) or tok.endswith((".yaml", ".yml")):
        return False
    return not (tok.startswith("-") and _known(tok, options) is not None)


def overrides_to_flags(rest: Sequence[str], options: dict) -> tuple[list[str], list[str]]:
    """Flag-command arguments: ``key=value`` naming an option of the command (``max_new_tokens=8`` ->
    ``--max-new-tokens=8``; a switch: ``live=true`` -> ``--live``) becomes that option. ``(arguments, converted)``."""
    out, converted, rest, j = [], [], list(rest), 0
    while j < len(rest):
        tok = rest[j]
        if tok == "--":
            out.extend(rest[j:])
            break
        if tok.startswith("-"):
            out.append(tok)
            action = _known(tok, options)
            if action is not None and "=" not in tok and _takes_value(action) and j + 1 < len(rest):
                out.append(rest[j + 1])
                j += 1
        elif _OVERRIDE.match(tok):
            key, _, value = tok.partition("=")
            opt = "--" + key.replace("_", "-")
            action = options.get(opt)
            if action is None:
                out.append(tok)  # not an option: argparse names it
            elif not _takes_value(action):
                if value.strip().lower() in _TRUE:
                    out.append(opt)
                    converted.append(opt)
                elif value.strip().lower() in _FALSE:
                    converted.append(f"(no {opt})")
                else:
                    out.append(tok)
            else:
                out.append(f"{opt}={value}")
                converted.append(f"{opt}={value}")
        else:
            out.append(tok)
        j += 1
    return out, converted


def normalize_argv(argv: Sequence[str], styles: dict[str, str],
                   options_of: Callable[[str], dict]) -> tuple[list[str], str | None, str | None]:
    """``(argv, command, notice)``: the other style's spelling rewritten for the command's style (``styles``:
    command -> "config" | "flags" | anything else: untouched); ``notice`` is the one-line deprecation message."""
    argv = list(argv)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # global flags take no values
        i += 1
    if i >= len(argv) or argv[i] not in styles:
        return argv, None, None
    cmd, head, rest = argv[i], argv[:i + 1], argv[i + 1:]
    style = styles[cmd]
    if style == "config":
        rest, conv = flags_to_overrides(rest, options_of(cmd))
        notice = (f"read {_shown(conv)} (the config commands take key=value; --key value is deprecated)"
                  if conv else None)
    elif style == "flags":
        rest, conv = overrides_to_flags(rest, options_of(cmd))
        notice = (f"read {_shown(conv)} ({cmd} takes --flags; key=value is accepted for its options but "
                  "deprecated)" if conv else None)
    else:
        notice = None
    return head + rest, cmd, notice


def _shown(items: Sequence[str]) -> str:
    """Arguments as one would type them (values quoted for the shell where needed)."""
    import shlex

    out = []
    for item in items:
        key, eq, value = item.partition("=")
        out.append(f"{key}={shlex.quote(value)}" if eq else item)
    return " ".join(out)
