"""Config files as nested frozen dataclasses: YAML in, ``key=value`` overrides, one-line errors.

The engine every command shares (train, eval, probe, demo; each owns its dataclass):
:func:`from_dict` builds *any* nested dataclass from a plain dict, :func:`load_config` reads a YAML file and
applies overrides, :func:`to_dict` goes back::

    cfg = load_config(MyEvalConfig, "eval.yaml", ["decode.max_len=64", "heads=[wait-k, entropy]"])

Rules (every error is a :class:`~proactive_jax.errors.ConfigError` naming the dotted key and what was expected):

- an unknown key is an error (with a "did you mean" hint); a missing key takes the field default, and a
  field without a default is required;
- values are checked against the field's annotation: ``bool`` takes only true/false, ``int`` only
  integers, ``float`` integers or floats, ``str`` only strings; ``X | None``, ``Union``, ``Literal``,
  ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict`` and nested dataclasses are understood (a float
  field also takes ``1e-3``, which PyYAML reads as a string); a bare
  ``tuple`` field takes a list (made a tuple, recursively) or a mapping (a sorted tuple of its items);
- a dataclass's own ``__post_init__`` checks still run; their ``ValueError`` is re-raised with the key.

Overrides are ``a.b.c=value`` strings whose value is parsed as YAML (``steps=10`` is an int, ``x=null``
is None, ``buckets=[[32,24]]`` a list), applied to the raw dict before validation, so a typo in an override
key is reported like a typo in the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union

import yaml

from proactive_jax.errors import ConfigError


# ---------------------------------------------------------------------------------------------
# Generic: dict -> nested dataclass
# ---------------------------------------------------------------------------------------------

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return f"a mapping ({tp.__name__})"
        return tp.__name__
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list, Sequence):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        if args:
            return f"a list [{', '.join(_type_name(a) for a in args)}]"
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    return str(tp)


def _hints(cls) -> dict:
    module = sys.modules.get(cls.__module__)
    ns = dict(vars(module)) if module else {}
    return typing.get_type_hints(cls, globalns=ns)


def _freeze(value):
    """Lists -> tuples (recursively), mappings -> sorted tuples of (key, value) items."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


# Longer than ~80 lines on purpose: one flat dispatch over the annotation kinds a run config uses, each
# branch a few lines; splitting it would scatter the type rules.
def convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against annotation ``tp`` and converted (lists to tuples, dicts to dataclasses)."""
    def fail():
        raise ConfigError(f"{path or '<root>'}: expected {_type_name(tp)}, got {value!r} "
                             f"({type(value).__name__})")

    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        fail()
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        # a single non-None member: its own (more specific) message
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and errors:
            msg = errors[0]
            raise ConfigError(msg if type(None) not in args else msg + " (or null)")
        fail()
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        fail()
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            fail()
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is tuple:
        if isinstance(value, (list, tuple, Mapping)):
            return _freeze(value)
        fail()
    if tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        fail()
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            fail()
        if len(args) == 2:
            return {convert(k, args[0], f"{path}.{k}"): convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
        return dict(value)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            fail()
        if len(args) == 2 and args[1] is Ellipsis:
            items = [convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
        elif args:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {_type_name(tp)} ({len(args)} items), got {value!r}")
            items = [convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = list(value)
        return list(items) if origin is list else tuple(items)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        fail()
    return value


def check_fields(cls, data: Mapping, path: str = "") -> dict:
    """Check the keys and value types of ``data`` against the fields of ``cls`` (all optional here);
    returns the converted values. Used for partial overrides (e.g. ``model.config`` on top of an HF config)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {data!r} ({type(data).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{sub}: unknown key{hint}; {cls.__name__} has {sorted(fields)}")
        out[key] = convert(value, hints[key], sub)
    return out


def from_dict(cls, data: Mapping | None, path: str = ""):
    """Build dataclass ``cls`` (nested dataclasses included) from a plain mapping, with typed errors."""
    data = {} if data is None else data
    values = check_fields(cls, data, path)
    for f in dataclasses.fields(cls):
        if f.init and f.name not in values and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:
            sub = f"{path}.{f.name}" if path else f.name
            raise ConfigError(f"{sub}: required key missing (expected {_type_name(_hints(cls)[f.name])})")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def to_dict(obj) -> Any:
    """A dataclass (nested) as plain YAML/JSON-friendly data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (e.g. steps=100 or mesh.fsdp=4)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Set ``a.b=value`` items in a (copied) nested dict; intermediate mappings are created."""
    import copy

    data = copy.deepcopy(dict(data))
    for item in overrides:
        keys, value = parse_override(item)
        cur = data
        for i, k in enumerate(keys[:-1]):
            nxt = cur.get(k)
            if nxt is None:
                nxt = cur[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(keys[:i + 1])} is {nxt!r}, not a mapping")
            cur = nxt
        cur[keys[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def config_and_overrides(path: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """A CLI's optional CONFIG argument and its ``key=value`` list: a first argument that holds ``=`` and is no
    file is the first override (so ``proactive-jax eval checkpoint=...`` needs no config file)."""
    overrides = list(overrides)
    if path is not None and "=" in path and not Path(path).exists():
        return None, [path] + overrides
    return path, overrides


def load_config(cls, path: str | Path | None, overrides: Sequence[str] = (), *, data: Mapping | None = None):
    """Read a YAML file (or take ``data``), apply overrides, build ``cls``; errors name file and key."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    try:
        return from_dict(cls, apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


# ---------------------------------------------------------------------------------------------
# Describing a schema: every key with its type, default and one line of doc (`COMMAND --help`)
# ---------------------------------------------------------------------------------------------

REQUIRED = "required"


def _dataclass_of(tp):
    """The dataclass inside annotation ``tp`` (``X`` or ``X | None``), else None."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def _one_line_doc(text: str, limit: int = 150) -> str:
    text = " ".join(text.replace("``", "`").split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 3].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "..."


def _docstring_doc(doc: str | None, name: str) -> str:
    """The sentence after ````name``:`` in a class docstring (how the sections document their keys)."""
    if not doc:
        return ""
    m = re.search(r"``" + re.escape(name) + r"``:\s*(.+)", doc, re.S)
    if not m:
        return ""
    rest = " ".join(m.group(1).split())
    end = re.search(r"(?<!e\.g)(?<!i\.e)(?<!etc)\.(\s|$)|;\s``|\s``[\w.]+``\s*:", rest)
    return rest[:end.start()] if end else rest


def field_docs(cls) -> dict[str, str]:
    """``{field name: doc}`` of a dataclass from its source: the ``# comment`` that ends the field's (first) line,
    else the comment lines right above it, else the sentence the class docstring gives ````name``: ...``."""
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        src = ""
    docs: dict[str, str] = {}
    if src:
        lines = src.splitlines()
        comments: dict[int, str] = {}  # line number -> comment text (only comments that follow code or stand alone)
        try:
            for tok in tokenize.generate_tokens(io.StringIO(src).readline):
                if tok.type == tokenize.COMMENT:
                    comments[tok.start[0]] = tok.string.lstrip("#").strip()
        except (tokenize.TokenError, IndentationError):
            pass
        tree = ast.parse(src)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node in body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            name, first, last = node.target.id, node.lineno, node.end_lineno or node.lineno
            text = comments.get(first) or (comments.get(last) if last != first else None)
            if not text:  # a block of comment-only lines right above the field
                block, i = [], first - 1
                while i >= 1 and lines[i - 1].strip().startswith("#"):
                    block.insert(0, comments.get(i, lines[i - 1].strip().lstrip("#").strip()))
                    i -= 1
                text = " ".join(block)
            if text:
                docs[name] = text
    for f in dataclasses.fields(cls):
        if f.name not in docs:
            doc = f.metadata.get("doc") if f.metadata else None
            docs[f.name] = doc or _docstring_doc(cls.__doc__, f.name)
    return {k: _one_line_doc(v) for k, v in docs.items()}


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _format_default(value, limit: int = 60) -> str:
    import json

    if value is dataclasses.MISSING:
        return REQUIRED
    try:
        text = json.dumps(to_dict(value), ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + " ..."


def describe_fields(cls, prefix: str = "", expand: Mapping[str, type] | None = None) -> list[tuple[str, str, str, str]]:
    """Every key of dataclass ``cls`` as ``(dotted key, type, default, doc)``, in field order: a nested dataclass
    (``render: RenderConfig``) is listed by its own keys (``render.unit``, ...); an optional one
    (``dataset: DatasetSpec | None``) by itself and then its keys. ``expand`` maps a ``dict`` field's name to the
    dataclass its keys follow (``{"speech": SpeechDemoConfig}``). Types read as the config errors word them
    (``int or null``, ``one of 'a', 'b'``); defaults as JSON (``null``, ``true``, ``[...]``); ``required`` when a
    key has no default. The doc is the field's ``# comment`` (see :func:`field_docs`), or empty."""
    hints = _hints(cls)
    docs = field_docs(cls)
    expand = dict(expand or {})
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        nested = _dataclass_of(tp) or (expand.get(f.name) if f.name in expand else None)
        default = _default_of(f)
        if nested is None or nested is not tp:  # a plain key, an optional section or an expanded dict
            out.append((key, _type_name(tp), _format_default(default), docs.get(f.name, "")))
        if nested is not None:
            out.extend(describe_fields(nested, key + "."))
    return out


def format_fields(cls, *, title: str | None = None, expand: Mapping[str, type] | None = None) -> str:
    """:func:`describe_fields` as help text: one line per key, ``  key: type = default  # doc``."""
    title = title or (f"config keys of {cls.__name__} (in the YAML file or as key=value overrides; values are YAML, "
                      "nested keys dotted):")
    lines = [title]
    for key, tp, default, doc in describe_fields(cls, expand=expand):
        lines.append(f"  {key}: {tp} = {default}" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)
