"""The training run schema: the sections of a run config (``configs/tiny-synthetic.yaml`` shows every one) and
their config-time checks; built by the engine in :mod:`proactive_jax.config`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Mapping, Sequence

import yaml

from proactive_jax.config import check_fields, load_config, to_dict
from proactive_jax.data.loaders import DatasetSpec
from proactive_jax.data.render import RenderConfig
from proactive_jax.method.objective import ObjectiveConfig
from proactive_jax.models.config import (ATTENTION_IMPLS, COMPUTE_DTYPES, REMAT_POLICIES, RENAMED_ATTENTION_IMPLS,
                                         ModelConfig, renamed_attention_message)
from proactive_jax.models.presets import MODEL_PRESETS

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

    hf_dir: str | None = None  # a Hugging Face directory: config and weights
    config_json: str | None = None  # a config.json file or directory: the shape only
    preset: str | None = None  # a named tiny shape (models/presets.py MODEL_PRESETS), e.g. tiny
    config: dict = dataclasses.field(default_factory=dict)  # ModelConfig field overrides, e.g. {num_hidden_layers: 1}
    dtype: Literal[COMPUTE_DTYPES] = "float32"  # compute dtype (master weights and optimizer state stay float32)
    # per-layer rematerialisation: true = "full", false = "none", or a policy (models/config.py REMAT_POLICIES)
    remat: bool | Literal[REMAT_POLICIES] = False
    scan_layers: bool = True  # the layers as one lax.scan (false: unrolled)
    attention: Literal[ATTENTION_IMPLS + tuple(RENAMED_ATTENTION_IMPLS)] = "dense"  # models/attention.py
    init: Literal["auto", "hf", "random", "checkpoint"] = "auto"  # weights: auto = hf_dir's when set, else random
    init_checkpoint: str | None = None  # init=checkpoint: a run directory or its checkpoints directory
    init_step: int | None = None  # init=checkpoint: the step (default: latest)
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
        if self.attention in RENAMED_ATTENTION_IMPLS:
            raise ValueError(renamed_attention_message(self.attention))
        bad = [k for k in self.config if k in ("dtype", "remat", "scan_layers", "attention")]
        if bad:
            raise ValueError(f"set {bad} as model.{bad[0]}, not inside model.config")
        check_fields(ModelConfig, self.config, "model.config")
        from proactive_jax.models.audio_config import EncoderConfig

        check_fields(EncoderConfig, self.audio_config, "model.audio_config")


@dataclasses.dataclass(frozen=True)
class SyntheticSection:
    tasks: tuple[str, ...] = ("lookup", "word-map")  # built-in tasks (data/synthetic.py)
    n_train: int = 2000  # per task
    n_valid: int = 64  # per task
    seed: int = 0  # seed of the generated examples

    def __post_init__(self):
        from proactive_jax.data.synthetic import SYNTHETIC_TASKS

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

    task: str = "synthetic"  # synthetic | a KNOWN_DATASETS name (iwslt2017-en-de, squad, ...) | custom | a speech task
    synthetic: SyntheticSection = SyntheticSection()
    dataset: DatasetSpec | None = None  # task=custom: where the rows come from
    adapter: str | None = None  # task=custom: a data.tasks.TASKS name
    adapter_options: dict = dataclasses.field(default_factory=dict)  # options of the task adapter
    split: str = "train"  # the training split
    valid_split: str | None = "validation"  # the split of the built-in validation loss (null: none)
    max_train_rows: int | None = None  # keep the first N training rows (null: all)
    max_valid_rows: int | None = 2000  # keep the first N validation rows
    tokenizer: str | None = None
    render: RenderConfig = RenderConfig()  # how examples become tokens
    buckets: tuple[tuple[int, int], ...] = ((32, 24),)  # [max source tokens S, max target tokens T] shapes
    m_cap: int | None = None  # the most source units per example (default: a bucket's S)
    global_batch_size: int = 16  # rows per optimizer step (all hosts)
    micro_batch_size: int | None = None  # rows per microbatch: gradient accumulation (null: none)
    seed: int = 0  # shuffling seed of the batches
    remainder: Literal["pad", "drop"] = "pad"  # a bucket's short last batch: padded with masked repeats or dropped
    on_unfit: Literal["error", "skip"] = "skip"  # an example that fits no bucket
    on_bad_example: Literal["error", "skip"] = "skip"  # a malformed row (counted and logged when skipped)
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

    dir: str  # a prepare-audio directory or a WAV + JSONL manifest
    num_workers: int = 0
    on_bad_audio: Literal["error", "skip"] | None = None
    resample: bool = False
    read_threads: int = 1  # Grain's read threads
    prefetch: int = 4  # Grain's prefetch buffer

    def __post_init__(self):
        if not self.dir:
            raise ValueError("dir is empty: give a prepare-audio directory or a .jsonl manifest")
        for key, low in (("num_workers", 0), ("read_threads", 1), ("prefetch", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"{key}={getattr(self, key)}: expected >= {low}")


@dataclasses.dataclass(frozen=True)
class AudioSection:
    """Speech runs (a ``qwen2_audio`` model and an audio ``data.task``, see ``training.audio_examples``).

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
    valid_manifest: str | None = None  # data.task=audio-jsonl: the validation JSONL manifest
    n_train: int = 256  # synthetic speech tasks: items per task
    n_valid: int = 32  # synthetic speech tasks: validation items per task
    # train batches from the bounded-memory Grain stream (real tasks); null: the in-memory pipeline
    stream: AudioStreamSection | None = None

    def __post_init__(self):
        from proactive_jax.models.audio_config import parse_encoder_mask

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

    lr: float = 5e-5  # peak learning rate
    schedule: Literal["cosine", "linear", "constant"] = "cosine"  # decay after the warmup
    warmup_steps: int = 0  # linear warmup steps
    warmup_ratio: float = 0.0  # used when warmup_steps is 0: a fraction of the total steps
    end_lr_ratio: float = 0.0  # the final learning rate as a fraction of lr
    b1: float = 0.9  # AdamW
    b2: float = 0.999  # AdamW
    eps: float = 1e-8  # AdamW
    weight_decay: float = 0.0  # AdamW (decoupled)
    clip_norm: float | None = 1.0  # global gradient-norm clipping (null: none)

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass(frozen=True)
class MeshSection:
    """Device mesh ``(data, fsdp)``; -1 on one axis = all remaining devices. The batch is sharded over
    both axes; parameters and optimizer state over ``fsdp`` ("fsdp") or replicated ("replicated")."""

    data: int = -1  # data-parallel axis size (-1: the devices left)
    fsdp: int = 1  # parameter-sharding axis size (-1: the devices left)
    param_sharding: Literal["fsdp", "replicated"] = "fsdp"  # parameters and optimizer state over fsdp, or whole


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    """Orbax checkpoints in ``dir`` (default ``<out_dir>/checkpoints``): every ``every`` steps (0: never,
    except on a signal and at the end), the last ``keep`` kept. ``resume``: "auto" (resume when a
    checkpoint exists), "never" (fail if one exists), "require" (fail if none). ``restore_step=N`` rolls back: steps after N are moved
    to ``<dir>/rolled_back/`` so that N's line of history is the live one. Every checkpoint carries per-leaf
    checksums, verified on restore; ``on_corrupt``: "error" (stop, naming the step and tensor) or "fallback"
    (resume from the newest intact step; the corrupt ones are moved aside like a rollback)."""

    every: int = 500  # save every N steps (0: only on a signal and at the end)
    keep: int = 3  # the newest N checkpoints are kept
    async_save: bool = True  # write in the background while training goes on
    dir: str | None = None  # default: <out_dir>/checkpoints
    resume: Literal["auto", "never", "require"] = "auto"  # auto: resume when a checkpoint exists
    restore_step: int | None = None  # roll back to step N (later steps are moved to <dir>/rolled_back/)
    save_on_signal: bool = True  # SIGTERM / Ctrl-C save at the next step boundary
    save_final: bool = True  # save the last step
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

    initialize: Literal["auto", "always", "never"] = "auto"  # jax.distributed.initialize (auto: on a pod / cluster)
    coordinator_address: str | None = None  # host:port of process 0 (default: detected)
    num_processes: int | None = None  # default: detected
    process_id: int | None = None  # default: detected
    initialization_timeout: int = 300  # seconds to wait for every process


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelSection  # where the model comes from
    data: DataSection = DataSection()
    objective: ObjectiveConfig = ObjectiveConfig()
    optim: OptimSection = OptimSection()
    mesh: MeshSection = MeshSection()
    checkpoint: CheckpointSection = CheckpointSection()
    distributed: DistributedSection = DistributedSection()
    audio: AudioSection = AudioSection()
    steps: int | None = None  # optimizer steps; default: epochs * steps per epoch
    epochs: float | None = None  # passes over the training data (when steps is null)
    out_dir: str = "runs/run"  # checkpoints, metrics.jsonl, the tokenization cache
    seed: int = 0  # model init and read-schedule draws (fold_in(seed key, step))
    packed: bool = True  # packed dual view (one pass) or the naive two-pass reference
    log_every: int = 1  # progress-bar refresh; metrics.jsonl gets every step
    eval_every: int = 0  # built-in validation loss + eval hook every N steps (0: off)
    tensorboard: bool = False  # also log to <out_dir>/tb (needs tensorboardX: pip install -e ".[tensorboard]")
    progress: bool = True  # a progress bar on stderr
    notes: str = ""  # free text, saved with the run config

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
