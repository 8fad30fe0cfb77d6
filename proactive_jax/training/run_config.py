"""YAML run configs as nested frozen dataclasses, with ``key=value`` overrides.

(About 600 lines on purpose: the generic dataclass <-> YAML machinery and the run config's sections with
their config-time validation are one schema; splitting them would separate each field from its check.)

The generic part (:func:`from_dict`, :func:`load_config`, :func:`apply_overrides`, :func:`to_dict`) builds
*any* nested dataclass from a plain dict and is meant to be reused by the eval and demo configs::

    cfg = load_config(MyEvalConfig, "configs/eval.yaml", ["decode.max_len=64", "heads=[wait-k, entropy]"])

Rules (every error names the dotted key and what was expected, see :class:`RunConfigError`):

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

The training run schema, :class:`RunConfig`, is at the bottom; ``configs/tiny-synthetic.yaml`` shows every
section.
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

from ..errors import ConfigError
from ..models.config import ModelConfig
from ..data.loaders import DatasetSpec
from ..data.render import RenderConfig
from ..method.objective import ObjectiveConfig


class RunConfigError(ConfigError):
    """A config file or override is malformed; the message names the dotted key and the expected type."""


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
        raise RunConfigError(f"{path or '<root>'}: expected {_type_name(tp)}, got {value!r} "
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
            except RunConfigError as e:
                errors.append(str(e))
        # a single non-None member: its own (more specific) message
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1 and errors:
            msg = errors[0]
            raise RunConfigError(msg if type(None) not in args else msg + " (or null)")
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
                raise RunConfigError(f"{path}: expected {_type_name(tp)} ({len(args)} items), got {value!r}")
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
        raise RunConfigError(f"{path or '<root>'}: expected a mapping, got {data!r} ({type(data).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RunConfigError(f"{sub}: unknown key{hint}; {cls.__name__} has {sorted(fields)}")
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
            raise RunConfigError(f"{sub}: required key missing (expected {_type_name(_hints(cls)[f.name])})")
    try:
        return cls(**values)
    except RunConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise RunConfigError(f"{path or cls.__name__}: {e}") from None


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
        raise RunConfigError(f"override {item!r}: expected key=value (e.g. steps=100 or mesh.fsdp=4)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise RunConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise RunConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
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
                raise RunConfigError(f"override {item!r}: {'.'.join(keys[:i + 1])} is {nxt!r}, not a mapping")
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
        raise RunConfigError(f"{p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RunConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
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
    except RunConfigError as e:
        raise RunConfigError(f"{path}: {e}" if path is not None else str(e)) from None


# ---------------------------------------------------------------------------------------------
# The training run schema
# ---------------------------------------------------------------------------------------------

MODEL_PRESETS: dict[str, dict] = {
    # a tiny Qwen3 for CPU runs on the synthetic tasks (vocab covers the synthetic tokenizer's 119 ids)
    "tiny": dict(model_type="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                 qk_norm=True, qkv_bias=False, max_position_embeddings=512, eos_token_id=3, pad_token_id=1),
    # the speech demo's tiny Qwen2-Audio (a HF-style qwen2_audio dict): a 4 s encoder window of 40 mel bins, ids of
    # the demo's word vocabulary (demo_speech.SPECIALS + the tone-words; <|AUDIO|> = 2, <|im_end|> = 1)
    "tiny-audio": {"model_type": "qwen2_audio", "audio_token_index": 2,
                   "audio_config": dict(num_mel_bins=40, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                                        encoder_ffn_dim=96, max_source_positions=200),
                   "text_config": dict(model_type="qwen2", vocab_size=24, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       qkv_bias=True, qk_norm=False, tie_word_embeddings=True,
                                       max_position_embeddings=512, eos_token_id=1)},
}
AUDIO_TASKS = ("librispeech", "spoken-squad", "audio-jsonl", "speech-lookup", "speech-transcribe")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """Where the model comes from.

    Shape: ``hf_dir`` (a Hugging Face directory: config and weights), else ``config_json`` (a config.json
    file or directory: shape only), else ``preset`` (see ``MODEL_PRESETS``); ``config`` then overrides
    single ``ModelConfig`` fields (e.g. ``num_hidden_layers: 1``). Weights (``init``): "auto" = the HF
    weights when ``hf_dir`` is set, else random; "hf"; "random"; "checkpoint" = the params of
    ``init_checkpoint`` (a run directory or its checkpoints directory; ``init_step``, default latest).
    """

    hf_dir: str | None = None
    config_json: str | None = None
    preset: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # per-layer rematerialisation: true = "full", false = "none", or a policy (models/config.py REMAT_POLICIES)
    remat: bool | Literal["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                          "save_attention_out"] = False
    scan_layers: bool = True
    attention: Literal["dense", "splash", "cudnn", "auto"] = "dense"  # models/attention.py
    init: Literal["auto", "hf", "random", "checkpoint"] = "auto"
    init_checkpoint: str | None = None
    init_step: int | None = None
    init_seed: int | None = None  # default: the run seed
    # qwen2_audio only: EncoderConfig field overrides (``model.config`` then overrides the text decoder)
    audio_config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.preset is not None and self.preset not in MODEL_PRESETS:
            raise ValueError(f"preset {self.preset!r} is unknown; expected one of {sorted(MODEL_PRESETS)}")
        if self.init == "hf" and self.hf_dir is None:
            raise ValueError("init='hf' needs model.hf_dir")
        if self.init == "checkpoint" and self.init_checkpoint is None:
            raise ValueError("init='checkpoint' needs model.init_checkpoint")
        if self.hf_dir is None and self.config_json is None and self.preset is None and not self.config:
            raise ValueError("no model given: set model.hf_dir, model.config_json, model.preset or model.config")
        bad = [k for k in self.config if k in ("dtype", "remat", "scan_layers", "attention")]
        if bad:
            raise ValueError(f"set {bad} as model.{bad[0]}, not inside model.config")
        check_fields(ModelConfig, self.config, "model.config")
        from ..models.audio_config import EncoderConfig

        check_fields(EncoderConfig, self.audio_config, "model.audio_config")


@dataclasses.dataclass(frozen=True)
class SyntheticSection:
    tasks: tuple[str, ...] = ("lookup", "word-map")
    n_train: int = 2000  # per task
    n_valid: int = 64  # per task
    seed: int = 0

    def __post_init__(self):
        from ..data.synthetic import SYNTHETIC_TASKS

        bad = [t for t in self.tasks if t not in SYNTHETIC_TASKS]
        if bad:
            raise ValueError(f"tasks: unknown synthetic task(s) {bad}; expected some of {sorted(SYNTHETIC_TASKS)}")
        if self.n_train < 1 or self.n_valid < 0:
            raise ValueError(f"n_train={self.n_train}, n_valid={self.n_valid}: expected n_train >= 1, n_valid >= 0")


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Examples, tokenizer, buckets and batch sizes.

    ``task``: "synthetic" (``synthetic`` section), a ``data.loaders.KNOWN_DATASETS`` name (e.g.
    "iwslt2017-en-de", "squad"), or "custom" (``dataset`` = a ``DatasetSpec`` and ``adapter`` = a
    ``data.tasks.TASKS`` name with ``adapter_options``). ``tokenizer``: a tokenizer directory (default:
    ``model.hf_dir``; the synthetic tasks use the shipped word-level tokenizer).
    ``global_batch_size`` rows per optimizer step, in microbatches of ``micro_batch_size`` (gradient
    accumulation; default: no accumulation).
    """

    task: str = "synthetic"
    synthetic: SyntheticSection = SyntheticSection()
    dataset: DatasetSpec | None = None
    adapter: str | None = None
    adapter_options: dict = dataclasses.field(default_factory=dict)
    split: str = "train"
    valid_split: str | None = "validation"
    max_train_rows: int | None = None
    max_valid_rows: int | None = 2000
    tokenizer: str | None = None
    render: RenderConfig = RenderConfig()
    buckets: tuple[tuple[int, int], ...] = ((32, 24),)
    m_cap: int | None = None
    global_batch_size: int = 16
    micro_batch_size: int | None = None
    seed: int = 0
    remainder: Literal["pad", "drop"] = "pad"
    on_unfit: Literal["error", "skip"] = "skip"
    on_bad_example: Literal["error", "skip"] = "skip"
    cache_dir: str | None = None  # default <out_dir>/cache
    valid_batches: int = 4  # batches of the built-in validation loss (eval_every)

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.micro_batch_size is not None and (
                self.micro_batch_size < 1 or self.global_batch_size % self.micro_batch_size):
            raise ValueError(f"micro_batch_size={self.micro_batch_size} must divide "
                             f"global_batch_size={self.global_batch_size}")
        if not self.buckets:
            raise ValueError("buckets is empty: give at least one [max_source_len, max_target_len]")

    @property
    def accum_steps(self) -> int:
        return 1 if self.micro_batch_size is None else self.global_batch_size // self.micro_batch_size


@dataclasses.dataclass(frozen=True)
class AudioStreamSection:
    """``audio.stream``: draw the train batches from the bounded-memory Grain stream
    (``data.audio_stream.audio_example_stream``) instead of holding every waveform in memory.

    ``dir``: a ``proactive-jax prepare-audio`` directory (ArrayRecord shards + ``index.json``) or a WAV + JSONL
    manifest. ``num_workers``: loader processes computing the features (0: in the training process).
    ``on_bad_audio``: "error" | "skip" (counted in the checkpointed stream state); null: ``data.on_bad_example``.
    ``resample``: resample audio of another rate (false: such a row is bad audio). ``read_threads``,
    ``prefetch``: Grain's read options."""

    dir: str
    num_workers: int = 0
    on_bad_audio: Literal["error", "skip"] | None = None
    resample: bool = False
    read_threads: int = 1
    prefetch: int = 4

    def __post_init__(self):
        if not self.dir:
            raise ValueError("dir is empty: give a prepare-audio directory or a .jsonl manifest")
        for key, low in (("num_workers", 0), ("read_threads", 1), ("prefetch", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}={getattr(self, key)}: expected >= {low}")


@dataclasses.dataclass(frozen=True)
class AudioSection:
    """Speech runs (a ``qwen2_audio`` model and an audio ``data.task``, see ``training.audio_data``).

    ``encoder``: "frozen" (audio tower + projector are constants of the step: no gradients, no optimizer state,
    bit-identical after training) or "train". ``encoder_mask``: "causal" (the streaming default), "block:K" or
    "bidirectional" (the released model; streaming then differs from training). ``conv_edge``: "zero" (a chunk
    never sees frames after it; training == streaming) or "lookahead" (10 ms of right context). ``chunk_ms``:
    the streaming unit (a whole number of 40 ms encoder tokens dividing the encoder window). ``clamp``: the
    log-mel floor (``data.audio``). ``max_seconds``: longer audio is skipped (``data.on_unfit=skip``, counted)
    or an error; default and upper bound: one encoder window (30 s), never truncated. ``system``: the system
    turn of the chat layout (real tasks; null: none)."""

    encoder: Literal["frozen", "train"] = "frozen"
    encoder_mask: str = "causal"
    conv_edge: Literal["zero", "lookahead"] = "zero"
    chunk_ms: float = 1000.0
    clamp: Literal["running", "utterance"] = "running"
    max_seconds: float | None = None
    system: str | None = "You are a helpful assistant."
    manifest: str | None = None  # data.task=audio-jsonl: the train JSONL manifest (data.audio.load_manifest)
    valid_manifest: str | None = None
    n_train: int = 256  # synthetic speech tasks: items per task
    n_valid: int = 32
    # train batches from the bounded-memory Grain stream (real tasks); null: the in-memory pipeline
    stream: AudioStreamSection | None = None

    def __post_init__(self):
        from ..models.audio_config import parse_encoder_mask

        try:
            parse_encoder_mask(self.encoder_mask)
        except ValueError as e:
            raise ValueError(f"encoder_mask: {e}") from None
        if self.chunk_ms <= 0 or (self.chunk_ms / 40) != int(self.chunk_ms / 40):
            raise ValueError(f"chunk_ms={self.chunk_ms}: expected a positive multiple of 40 ms (one encoder token)")
        if self.max_seconds is not None and not 0 < self.max_seconds <= 30:
            raise ValueError(f"max_seconds={self.max_seconds}: expected 0 < max_seconds <= 30 (one encoder window; "
                             "longer audio is never truncated, it is skipped or an error)")
        if self.n_train < 1 or self.n_valid < 0:
            raise ValueError(f"n_train={self.n_train}, n_valid={self.n_valid}: expected n_train >= 1, n_valid >= 0")


@dataclasses.dataclass(frozen=True)
class OptimSection:
    """AdamW with linear warmup then cosine / linear decay (to ``lr * end_lr_ratio``) or constant."""

    lr: float = 5e-5
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0: a fraction of the total steps
    end_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh ``(data, fsdp)``; -1 on one axis = all remaining devices. The batch is sharded over
    both axes; parameters and optimizer state over ``fsdp`` ("fsdp") or replicated ("replicated")."""

    data: int = -1
    fsdp: int = 1
    param_sharding: Literal["fsdp", "replicated"] = "fsdp"


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints in ``dir`` (default ``<out_dir>/checkpoints``): every ``every`` steps (0: never,
    except on a signal and at the end), the last ``keep`` kept. ``resume``: "auto" (resume when a
    checkpoint exists), "never" (fail if one exists), "require" (fail if none). ``restore_step=N`` rolls back: steps after N are moved
    to ``<dir>/rolled_back/`` so that N's line of history is the live one. Every checkpoint carries per-leaf
    checksums, verified on restore; ``on_corrupt``: "error" (stop, naming the step and tensor) or "fallback"
    (resume from the newest intact step; the corrupt ones are moved aside like a rollback)."""

    every: int = 500
    keep: int = 3
    async_save: bool = True
    dir: str | None = None
    resume: Literal["auto", "never", "require"] = "auto"
    restore_step: int | None = None
    save_on_signal: bool = True
    save_final: bool = True
    on_corrupt: Literal["error", "fallback"] = "error"

    def __post_init__(self):
        if self.every < 0:
            raise ValueError(f"every={self.every}: expected >= 0 (0: only on a signal and at the end)")
        if self.keep < 1:
            raise ValueError(f"keep={self.keep}: expected >= 1 (how many of the newest checkpoints to keep; "
                             "keep=0 would delete the final one too)")
        if self.restore_step is not None and self.restore_step < 0:
            raise ValueError(f"restore_step={self.restore_step}: expected a step >= 0 or null (the latest)")


@dataclasses.dataclass(frozen=True)
class DistributedSection:
    """``jax.distributed.initialize``: "auto" = when a pod / cluster environment is detected (TPU VM
    worker env, SLURM, Open MPI, or ``coordinator_address`` / ``JAX_COORDINATOR_ADDRESS`` set)."""

    initialize: Literal["auto", "always", "never"] = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelSection
    data: DataSection = DataSection()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimSection = OptimSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    distributed: DistributedSection = DistributedSection()
    audio: AudioSection = AudioSection()
    steps: int | None = None  # optimizer steps; default: epochs * steps per epoch
    epochs: float | None = None
    out_dir: str = "runs/run"
    seed: int = 0  # model init and read-schedule draws (fold_in(seed key, step))
    packed: bool = True  # packed dual view (one pass) or the naive two-pass reference
    log_every: int = 1  # progress-bar refresh; metrics.jsonl gets every step
    eval_every: int = 0  # built-in validation loss + eval hook every N steps (0: off)
    tensorboard: bool = True
    progress: bool = True
    notes: str = ""

    def __post_init__(self):
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps={self.steps}: expected >= 1 optimizer steps (a run of 0 steps trains and "
                             "saves nothing)")
        for key in ("eval_every", "log_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: expected >= 0 (0: off)")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        synthetic = self.data.task in ("synthetic", "speech-lookup", "speech-transcribe")
        if self.data.task.startswith("speech-") and self.data.dataset is not None:
            raise ValueError(f"data.task={self.data.task!r} is synthetic: data.dataset must be null")
        if self.data.task == "audio-jsonl" and self.audio.manifest is None and self.audio.stream is None:
            raise ValueError("data.task='audio-jsonl' needs audio.manifest (a JSONL file of {audio, text}) or "
                             "audio.stream")
        if self.audio.stream is not None and self.data.task not in ("librispeech", "spoken-squad", "audio-jsonl"):
            raise ValueError(f"audio.stream is set but data.task={self.data.task!r}; the stream serves "
                             "librispeech | spoken-squad | audio-jsonl")
        if self.model.hf_dir is None and not synthetic and self.data.tokenizer is None:
            raise ValueError(f"data.task={self.data.task!r} needs a tokenizer: set data.tokenizer or model.hf_dir")


def load_run_config(path: str | Path | None, overrides: Sequence[str] = (), *,
                    data: Mapping | None = None) -> RunConfig:
    """Load a training run config (YAML file or ``data``) with ``a.b=value`` overrides."""
    return load_config(RunConfig, path, overrides, data=data)


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
