"""Training: mesh, sharded jitted train step, optax AdamW, gradient accumulation, orbax checkpoints, the loop.

**The device-parallel step.** The design card's "pmapped train step" is one ``jax.jit`` over a
``jax.sharding.Mesh`` with axes ``("data", "fsdp")``: ``jax.pmap`` is in maintenance mode since JAX 0.8 and
cannot shard parameters, so the sharded jit *is* the device-parallel step. Inputs and outputs carry
``NamedSharding``s and XLA's SPMD partitioner inserts the collectives:

- the batch is sharded on its leading axis over ``data * fsdp`` (every device gets its own rows),
- parameters and the AdamW state are replicated (pure data parallel, ``mesh.fsdp = 1`` or
  ``mesh.param_sharding = replicated``) or sharded over ``fsdp`` on their largest divisible axis (FSDP:
  all-gathered per layer in the forward/backward pass, gradients reduce-scattered),
- one step: ``fold_in(key(seed), step)`` -> per-row read schedules (keys ``fold_in(key, global row)``) ->
  the packed dual-view loss sums (``objective.packed_loss_sums``) -> ``jax.value_and_grad`` -> (optional)
  ``lax.scan`` over microbatches accumulating token *sums* -> divide once by the token count of the whole
  global batch -> global-norm clipping + AdamW (warmup, cosine/linear decay, no decay on norms/biases) ->
  update of the float32 master weights (compute in ``ModelConfig.dtype``, remat by ``ModelConfig.remat``).
  A non-finite loss or gradient norm leaves the state untouched (the loop then stops with an error).
  The train state is donated (``donate_argnums``), so the update happens in place.

**Multi-host.** ``jax.distributed.initialize()`` runs when a pod / cluster is detected (or when asked);
every host builds the same deterministic data plan and feeds its own rows with
``jax.make_array_from_process_local_data``; only process 0 writes logs, metrics and exports; all processes
take part in checkpointing (orbax).

**Checkpoints and resume.** See :mod:`proactive_jax.training.checkpoint`. The data position is the step (batches are
a pure function of the step) and the schedule RNG is derived from the step, so a resumed run continues
exactly: N straight steps == N/2 steps + SIGTERM + resume for N/2 (tested). SIGTERM sets a flag; the loop
saves at the next step boundary and returns cleanly. On multi-host runs JAX's preemption service (started
by ``jax.distributed.initialize``) takes the SIGTERM and ``multihost_utils.reached_preemption_sync_point``
makes every process stop and save at the same step (without that service the flag is all-gathered).

Python API: :func:`train`, :func:`export`; CLI: :func:`train_main`, :func:`export_main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .checkpoint import (CheckpointError, CheckpointStore, model_config_from_dict, model_config_to_dict,
                         restore_params)
from ..models.config import ModelConfig, load_hf_config
from ..method.objective import (ObjectiveConfig, naive_loss_sums, num_loss_tokens, pack_batch, packed_loss_sums,
                        weighted_total)
from .run_config import (MODEL_PRESETS, DataSection, MeshSection, ModelSection, OptimSection, RunConfig,
                         RunConfigError, check_fields, dump_run_config, load_run_config, to_dict)

log = logging.getLogger(__name__)

BATCH_AXES = ("data", "fsdp")
MESH_AXES = ("data", "fsdp")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; the message names the step and the last good checkpoint."""


# ---------------------------------------------------------------------------------------------
# Distributed init and mesh
# ---------------------------------------------------------------------------------------------

def _cluster_detected() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        try:
            if int(env.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def maybe_initialize_distributed(sec) -> bool:
    """Call ``jax.distributed.initialize`` when the run is multi-process; returns whether it is initialized.

    Must run before anything touches a JAX backend. ``sec``: a ``DistributedSection``.
    """
    if jax.distributed.is_initialized():
        return True
    want = sec.initialize == "always" or (
        sec.initialize == "auto" and (sec.coordinator_address is not None or _cluster_detected()))
    if not want:
        return False
    kw = dict(coordinator_address=sec.coordinator_address, num_processes=sec.num_processes,
              process_id=sec.process_id, initialization_timeout=sec.initialization_timeout)
    jax.distributed.initialize(**{k: v for k, v in kw.items() if v is not None})
    log.info("jax.distributed initialized: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def make_mesh(sec: MeshSection, devices: Sequence | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default all); -1 on one axis takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    data, fsdp = sec.data, sec.fsdp
    if data == -1 and fsdp == -1:
        raise RunConfigError("mesh: at most one of mesh.data, mesh.fsdp may be -1")
    if data == -1:
        if fsdp <= 0 or n % fsdp:
            raise RunConfigError(f"mesh.fsdp={fsdp} does not divide the {n} devices")
        data = n // fsdp
    if fsdp == -1:
        if data <= 0 or n % data:
            raise RunConfigError(f"mesh.data={data} does not divide the {n} devices")
        fsdp = n // data
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise RunConfigError(f"mesh: data={sec.data} x fsdp={sec.fsdp} does not match the {n} devices "
                             f"(use -1 on one axis to fill)")
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh((data, fsdp), devices)
    except Exception:  # noqa: BLE001 - topology-unaware fallback (CPU, odd device sets)
        arr = np.asarray(devices, dtype=object).reshape(data, fsdp)
    return Mesh(arr, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


# the vocabulary axis of these leaves is sharded only when no other axis divides (see param_partition_spec)
VOCAB_AXIS = {("embed_tokens", "embedding"): 0, ("lm_head", "kernel"): 1}


def param_partition_spec(path: tuple[str, ...], shape: tuple[int, ...], fsdp: int) -> P:
    """FSDP spec of one parameter: ``"fsdp"`` on its largest axis divisible by ``fsdp``; replicated when no
    axis divides. Two exceptions: never the stacked ``layers`` axis (the layer scan slices it), and the
    vocabulary axis of the embedding / LM head only as a last resort: sharding it makes XLA shard the logits
    over the vocabulary and then re-gather the ``[B, 2T, V]`` logits cotangent over the batch ("involuntary
    full rematerialization"), while sharding the hidden axis all-gathers the weight, FSDP style."""
    if fsdp <= 1:
        return P()
    skip = 1 if path and path[0] == "layers" else 0
    cands = [(size, i) for i, size in enumerate(shape) if i >= skip and size % fsdp == 0]
    if not cands:
        return P()
    vocab = VOCAB_AXIS.get(tuple(path))
    if vocab is not None and any(i != vocab for _, i in cands):
        cands = [(size, i) for size, i in cands if i != vocab]
    _, axis = max(cands)
    parts = [None] * len(shape)
    parts[axis] = "fsdp"
    return P(*parts)


def param_shardings(abstract_params, mesh: Mesh, mode: str = "fsdp"):
    fsdp = mesh.shape["fsdp"] if mode == "fsdp" else 1
    return jax.tree_util.tree_map_with_path(
        lambda p, a: NamedSharding(mesh, param_partition_spec(_keys(p), tuple(a.shape), fsdp)), abstract_params)


def opt_state_shardings(abstract_opt, abstract_params, p_shardings, mesh: Mesh):
    """Optimizer-state leaves that mirror a parameter (Adam's mu/nu) get its sharding; others replicate."""
    by_path = {}
    for (path, a), (_, s) in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                 jax.tree_util.tree_flatten_with_path(p_shardings)[0]):
        by_path[_keys(path)] = (tuple(a.shape), s)

    def pick(path, leaf):
        hit = by_path.get(_keys(path))
        if hit is not None and hit[0] == tuple(leaf.shape):
            return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------

def warmup_steps(optim: OptimSection, total_steps: int) -> int:
    if optim.warmup_steps:
        return int(optim.warmup_steps)
    return int(round(optim.warmup_ratio * total_steps))


def make_schedule(optim: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``lr``, then cosine / linear decay to ``lr * end_lr_ratio`` at ``total_steps``."""
    total = max(int(total_steps), 1)
    warm = min(warmup_steps(optim, total), total)
    end = optim.lr * optim.end_lr_ratio
    if optim.schedule == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(optim.lr, end, max(total - warm, 1))
    else:
        decay = optax.cosine_decay_schedule(optim.lr, max(total - warm, 1), alpha=optim.end_lr_ratio)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warm), decay], [warm])


def decay_mask(params):
    """True where weight decay applies: matrices; not norms (``*norm*`` names) and not biases."""
    def want(path, leaf):
        names = _keys(path)
        if not names:
            return leaf.ndim >= 2
        if names[-1] == "bias" or any("norm" in n for n in names):
            return False
        per_layer_ndim = leaf.ndim - (1 if names[0] == "layers" else 0)
        return per_layer_ndim >= 2

    return jax.tree_util.tree_map_with_path(want, params)


def make_optimizer(optim: OptimSection, total_steps: int) -> optax.GradientTransformation:
    parts = []
    if optim.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.clip_norm))
    parts.append(optax.adamw(make_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


# ---------------------------------------------------------------------------------------------
# Loss and gradients (one value_and_grad; optional accumulation over microbatches)
# ---------------------------------------------------------------------------------------------

def seq_tokens(batch) -> jax.Array:
    """Non-padding positions of the packed dual view ``S + 2T`` over the valid rows."""
    per_row = batch["source_len"] + 2 * (batch["header_len"] + batch["target_len"])
    return jnp.sum(per_row * batch["example_mask"])


def loss_and_grads(config: ModelConfig, obj: ObjectiveConfig, params, batch, key, *, accum_steps: int = 1,
                   packed: bool = True, mesh: Mesh | None = None, grad_shardings=None):
    """``(loss, terms, grads)`` of the global batch, token-averaged over the WHOLE batch.

    With ``accum_steps = k > 1`` the batch (B rows) is split into k microbatches of B/k rows, row
    ``a*k + j`` going to microbatch j (so every device keeps its own rows), and a ``lax.scan`` accumulates
    the gradients of the token *sums*; everything is divided once by the global token count. Row ``r`` of
    the global batch always draws its schedule with ``fold_in(key, r)``, so the result equals one large
    batch (to float rounding).
    """
    sums_fn = packed_loss_sums if packed else naive_loss_sums
    count = num_loss_tokens(batch)
    n = jnp.maximum(count, 1).astype(jnp.float32)
    b = batch["target"].shape[0]
    k = int(accum_steps)
    if b % k:
        raise ValueError(f"batch of {b} rows does not split into {k} microbatches")

    def micro_loss(p, mb):
        sums = sums_fn(config, obj, p, mb, key)
        return weighted_total(sums, obj) / n, sums

    vg = jax.value_and_grad(micro_loss, has_aux=True)
    if k == 1:
        mb = dict(batch)
        mb["row_id"] = jnp.arange(b, dtype=jnp.int32)
        (loss, sums), grads = vg(params, mb)
        if grad_shardings is not None:  # reduce-scatter straight into the parameters' layout
            grads = jax.lax.with_sharding_constraint(grads, grad_shardings)
    else:
        m = b // k
        micro = {name: x.reshape((m, k) + x.shape[1:]).swapaxes(0, 1) for name, x in batch.items()}
        micro["row_id"] = jnp.arange(b, dtype=jnp.int32).reshape(m, k).T
        if mesh is not None:
            spec = NamedSharding(mesh, P(None, BATCH_AXES))
            micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), micro)
        zeros = jax.tree.map(jnp.zeros_like, params)
        if grad_shardings is not None:
            zeros = jax.lax.with_sharding_constraint(zeros, grad_shardings)
        zero_sums = {name: jnp.zeros((), jnp.float32) for name in ("batch", "mslm", "kl")}

        def body(carry, mb):
            g_acc, l_acc, s_acc = carry
            (l, s), g = vg(params, mb)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            if grad_shardings is not None:
                g_acc = jax.lax.with_sharding_constraint(g_acc, grad_shardings)
            return (g_acc, l_acc + l, jax.tree.map(jnp.add, s_acc, s)), None

        (grads, loss, sums), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32), zero_sums), micro)
    terms = {name: v / n for name, v in sums.items()}
    return loss, {**terms, "tokens": count}, grads


# ---------------------------------------------------------------------------------------------
# The jitted train step (cached per static spec, so repeated train() calls share the compilation)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StepSpec:
    model: ModelConfig
    objective: ObjectiveConfig
    optim: OptimSection
    total_steps: int
    accum_steps: int
    packed: bool
    seed: int
    mesh: Mesh
    param_sharding: str = "fsdp"


@functools.lru_cache(maxsize=32)
def state_shardings(spec: StepSpec):
    """``(state shardings, abstract state)`` for ``{"step", "params", "opt_state"}``."""
    from ..models.qwen import abstract_params

    abstract_p = abstract_params(spec.model)
    p_sh = param_shardings(abstract_p, spec.mesh, spec.param_sharding)
    tx = make_optimizer(spec.optim, spec.total_steps)
    abstract_o = jax.eval_shape(tx.init, abstract_p)
    o_sh = opt_state_shardings(abstract_o, abstract_p, p_sh, spec.mesh)
    sh = {"step": replicated(spec.mesh), "params": p_sh, "opt_state": o_sh}
    abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_p, "opt_state": abstract_o}
    return sh, abstract


@functools.lru_cache(maxsize=32)
def build_train_step(spec: StepSpec) -> Callable:
    """The jitted, sharded, donating step ``(state, batch) -> (state, metrics)``."""
    tx = make_optimizer(spec.optim, spec.total_steps)
    schedule = make_schedule(spec.optim, spec.total_steps)
    sh, _ = state_shardings(spec)
    mesh = spec.mesh

    def step_fn(state, batch):
        params, opt_state, step = state["params"], state["opt_state"], state["step"]
        key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), step)
        loss, terms, grads = loss_and_grads(spec.model, spec.objective, params, batch, key,
                                            accum_steps=spec.accum_steps, packed=spec.packed, mesh=mesh,
                                            grad_shardings=sh["params"])
        gnorm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 - a non-finite step changes nothing
        new_state = {"step": jnp.where(ok, step + 1, step).astype(jnp.int32),
                     "params": jax.tree.map(keep, new_params, params),
                     "opt_state": jax.tree.map(keep, new_opt, opt_state)}
        metrics = {"loss": loss, **terms, "seq_tokens": seq_tokens(batch), "grad_norm": gnorm,
                   "lr": schedule(step), "finite": ok}
        return new_state, metrics

    return jax.jit(step_fn, in_shardings=(sh, batch_sharding(mesh)),
                   out_shardings=(sh, replicated(mesh)), donate_argnums=(0,))


@functools.lru_cache(maxsize=32)
def build_eval_sums(spec: StepSpec) -> Callable:
    """Jitted ``(params, batch, key) -> (sums, count)`` with the train step's shardings (no gradients)."""
    sh, _ = state_shardings(spec)
    sums_fn = packed_loss_sums if spec.packed else naive_loss_sums

    def f(params, batch, key):
        return sums_fn(spec.model, spec.objective, params, batch, key), num_loss_tokens(batch)

    return jax.jit(f, in_shardings=(sh["params"], batch_sharding(spec.mesh), replicated(spec.mesh)),
                   out_shardings=replicated(spec.mesh))


def place(tree, shardings):
    """Put a tree of host arrays (or jax arrays) onto ``shardings`` (a matching tree or one sharding for all);
    multi-host safe (every process passes the same values)."""
    def one(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        arr = np.asarray(x)
        return jax.make_array_from_callback(arr.shape, s, lambda idx: arr[idx])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def global_batch(host_batch: dict, sharding: NamedSharding, host_count: int) -> dict:
    """The global batch from this process's rows (``jax.make_array_from_process_local_data``)."""
    out = {}
    for name, x in host_batch.items():
        x = np.asarray(x)
        shape = (x.shape[0] * host_count,) + x.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out


# ---------------------------------------------------------------------------------------------
# Model and data from the run config
# ---------------------------------------------------------------------------------------------

def resolve_model_config(sec: ModelSection) -> ModelConfig:
    compute = dict(dtype=sec.dtype, remat=sec.remat, scan_layers=sec.scan_layers)
    if sec.hf_dir is not None:
        if not Path(sec.hf_dir).is_dir():
            raise FileNotFoundError(f"model.hf_dir={sec.hf_dir}: directory does not exist (expected a Hugging "
                                    "Face checkpoint directory with config.json and *.safetensors)")
        cfg = load_hf_config(sec.hf_dir)
    elif sec.config_json is not None:
        if not Path(sec.config_json).exists():
            raise FileNotFoundError(f"model.config_json={sec.config_json}: file not found")
        cfg = load_hf_config(sec.config_json)
    elif sec.preset is not None:
        cfg = ModelConfig(**MODEL_PRESETS[sec.preset])
    else:
        cfg = ModelConfig()
    over = check_fields(ModelConfig, sec.config, "model.config")
    try:
        return cfg.replace(**over, **compute)
    except ValueError as e:
        raise RunConfigError(f"model.config: {e}") from None


@dataclasses.dataclass
class DataBundle:
    train: Any  # data.pipeline.Pipeline
    valid: Any | None
    tokenizer_dir: str | None
    vocab_size: int


def _collate(m_cap):
    def collate(examples, bucket):
        return pack_batch(examples, bucket, batch_size=len(examples), m_cap=m_cap or bucket[0])
    return collate


def _text_examples(data: DataSection, split: str, max_rows: int | None, *, n_synthetic: int | None = None):
    """``(dataset key, zero-arg loader of TextExamples)`` for the configured task and ``split``."""
    from ..data import loaders, synthetic

    if data.task == "synthetic":
        syn = data.synthetic
        split = {"validation": "valid"}.get(split, split)
        n = n_synthetic if n_synthetic is not None else syn.n_train

        def load():
            out = []
            for name in syn.tasks:
                out += synthetic.make_task(name, n, seed=syn.seed, split=split)
            return out

        return f"synthetic:{','.join(syn.tasks)}:{n}:{syn.seed}:{split}", load
    if data.task == "custom":
        if data.dataset is None or data.adapter is None:
            raise RunConfigError("data.task=custom needs data.dataset (a DatasetSpec) and data.adapter")
        spec = dataclasses.replace(data.dataset, split=split, max_rows=max_rows)
        adapter, opts = data.adapter, dict(data.adapter_options)
    else:
        if data.task not in loaders.KNOWN_DATASETS:
            raise RunConfigError(f"data.task={data.task!r}: expected 'synthetic', 'custom' or one of "
                                 f"{sorted(loaders.KNOWN_DATASETS)}")
        spec, adapter, opts = loaders.known_dataset(data.task, split)
        spec = dataclasses.replace(spec, max_rows=max_rows)
        opts.update(data.adapter_options)

    def load():
        rows, _ = loaders.load_task(spec, adapter, on_bad_example=data.on_bad_example, **opts)
        return rows

    return f"{spec.key()}|{adapter}|{json.dumps(opts, sort_keys=True)}", load


def build_data(run: RunConfig, model_cfg: ModelConfig, *, host_index: int = 0, host_count: int = 1,
               n_devices: int = 1) -> DataBundle:
    """Tokenizer, rendered + cached examples and the deterministic per-host pipelines (train, valid)."""
    from transformers import AutoTokenizer

    from ..data import pipeline as pl
    from ..data import synthetic

    data = run.data
    tok_dir = data.tokenizer or (str(synthetic.ASSET_DIR) if data.task == "synthetic" else run.model.hf_dir)
    if tok_dir is None or not Path(tok_dir).is_dir():
        raise FileNotFoundError(f"data.tokenizer={tok_dir}: tokenizer directory does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if len(tokenizer) > model_cfg.vocab_size:
        raise RunConfigError(f"the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the model's vocab_size "
                             f"is {model_cfg.vocab_size} (model.config.vocab_size)")
    cache_dir = data.cache_dir or str(Path(run.out_dir) / "cache")
    micro = data.micro_batch_size or data.global_batch_size
    if micro % n_devices:
        raise RunConfigError(f"the (micro)batch of {micro} rows (data.micro_batch_size or data.global_batch_size) "
                             f"must be a multiple of the {n_devices} devices of the mesh")

    def pipeline(split, max_rows, batch_size, n_syn=None):
        key, load = _text_examples(data, split, max_rows, n_synthetic=n_syn)
        prepared = pl.prepare_examples(load, tokenizer, data.render, dataset_key=key, cache_dir=cache_dir,
                                       on_bad_example=data.on_bad_example)
        if not prepared.examples:
            raise RunConfigError(f"data.task={data.task!r} split {split!r}: no usable examples")
        return pl.Pipeline(prepared.examples, [tuple(b) for b in data.buckets], global_batch_size=batch_size,
                           collate=_collate(data.m_cap), seed=data.seed, host_index=host_index,
                           host_count=host_count, remainder=data.remainder, on_unfit=data.on_unfit,
                           ids=prepared.ids)

    train = pipeline(data.split, data.max_train_rows, data.global_batch_size)
    valid = None
    want_valid = run.eval_every > 0 and data.valid_batches > 0 and (
        data.task == "synthetic" and data.synthetic.n_valid > 0 or data.task != "synthetic" and data.valid_split)
    if want_valid:
        valid = pipeline(data.valid_split or "valid", data.max_valid_rows, micro, n_syn=data.synthetic.n_valid)
    return DataBundle(train, valid, str(tok_dir), len(tokenizer))


def device_batch(host_batch: dict) -> dict:
    """Pipeline output -> the arrays the step takes (``valid`` folded into ``example_mask``)."""
    b = {k: v for k, v in host_batch.items() if k not in ("valid", "example_index")}
    if "valid" in host_batch:
        b["example_mask"] = (np.asarray(b["example_mask"]) * np.asarray(host_batch["valid"])).astype(np.int32)
    return b


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

class MetricsLog:
    """``metrics.jsonl`` (every record) + TensorBoard (when available); a no-op off process 0."""

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # keep what the resumed state has seen; drop records of steps a killed run did after its checkpoint
            keep = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if resume_step is not None and rec.get("step", 0) <= resume_step:
                    keep.append(line)
            self.path.write_text("".join(x + "\n" for x in keep))
        self.f = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception as e:  # noqa: BLE001 - optional
                log.info("TensorBoard logging off (%s)", e)

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            prefix = "eval/" if rec.get("kind") == "eval" else "train/"
            for k, v in rec.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k if "/" in k else prefix + k, v, rec["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.f.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


class _SignalFlag:
    """SIGTERM -> a flag read at the next step boundary (installed only in the main thread)."""

    def __init__(self, enabled: bool):
        self.signum = None
        self.prev = None
        self.installed = enabled and threading.current_thread() is threading.main_thread()
        if self.installed:
            self.prev = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        print(f"proactive_jax.training: received signal {signum}; saving a checkpoint at the next step boundary",
              file=sys.stderr, flush=True)

    def restore(self):
        if self.installed:
            signal.signal(signal.SIGTERM, self.prev if self.prev is not None else signal.SIG_DFL)
            self.installed = False


def _preemption_service() -> bool:
    """Whether JAX's preemption sync service runs (multi-process runs; ``jax_enable_preemption_service``).

    It takes SIGTERM itself (a notifier installed by ``jax.distributed.initialize``) and agrees on a
    common stop step through the coordination service, without device collectives."""
    if jax.process_count() < 2:
        return False
    try:
        from jax._src import distributed

        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


def _should_stop(flag: "_SignalFlag | None", step: int) -> bool:
    """Stop at this step boundary? Single process: our SIGTERM flag. Multi-process: JAX's preemption sync
    point (every process gets True at the same step); without that service, the flag all-gathered."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if flag is None:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return bool(np.any(multihost_utils.process_allgather(np.int32(flag.signum is not None))))
    return flag is not None and flag.signum is not None


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    params: Any
    history: list  # one dict per step: step, loss, batch, mslm, kl, tokens, grad_norm, lr, ...
    out_dir: Path
    step: int = 0
    stopped: str = "done"  # "done" | "signal"
    evals: list = dataclasses.field(default_factory=list)
    model_config: ModelConfig | None = None
    checkpoint_dir: str | None = None


def _initial_params(run: RunConfig, model_cfg: ModelConfig, p_sh, init_params):
    from ..models.qwen import init_params as random_params

    sec = run.model
    if init_params is not None:  # copied: the caller's arrays are not consumed by the donated state
        return jax.tree.map(lambda x: x.copy(), place(init_params, p_sh)), "given"
    mode = sec.init
    if mode == "auto":
        mode = "hf" if sec.hf_dir is not None else "random"
    if mode == "hf":
        from ..models.hf import load_pretrained

        saved = load_hf_config(sec.hf_dir)
        if any(getattr(saved, k) != getattr(model_cfg, k) for k in _SHAPE_FIELDS):
            raise RunConfigError(f"model.config changes the shape of the weights in model.hf_dir={sec.hf_dir} "
                                 f"({ {k: sec.config[k] for k in sec.config if k in _SHAPE_FIELDS} }); "
                                 "use model.init=random or drop those overrides")
        flat = {}
        for path, s in jax.tree_util.tree_flatten_with_path(p_sh)[0]:
            flat[_keys(path)] = s
        _, params = load_pretrained(sec.hf_dir, dtype=model_cfg.dtype,
                                    place=lambda path, x: place(x, flat[tuple(path)]))
        return params, f"hf:{sec.hf_dir}"
    if mode == "checkpoint":
        cfg, params, _, step = restore_params(sec.init_checkpoint, sec.init_step, shardings=p_sh)
        _check_same_shape(cfg, model_cfg, f"model.init_checkpoint={sec.init_checkpoint}")
        return params, f"checkpoint:{sec.init_checkpoint}@{step}"
    seed = run.seed if sec.init_seed is None else sec.init_seed
    params = jax.jit(lambda: random_params(model_cfg, seed), out_shardings=p_sh)()
    return params, f"random:{seed}"


_SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings", "qkv_bias",
                 "o_bias", "qk_norm")


def _check_same_shape(saved: ModelConfig, cur: ModelConfig, where: str) -> None:
    diff = {k: (getattr(saved, k), getattr(cur, k)) for k in _SHAPE_FIELDS if getattr(saved, k) != getattr(cur, k)}
    if diff:
        raise CheckpointError(f"{where}: the checkpoint's model differs from the configured one "
                              f"(field: saved vs configured): {diff}")


def _host(x) -> np.ndarray:
    """The value of a replicated array (multi-host safe: read from a local shard)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _fetch(metrics) -> dict:
    return {k: (bool(_host(v)) if k == "finite" else float(_host(v))) for k, v in metrics.items()}


def train(run: RunConfig, *, init_params=None, eval_hook: Callable | None = None,
          devices: Sequence | None = None) -> TrainResult:
    """Run (or resume) the training described by ``run``.

    ``init_params``: a params tree to start from (instead of ``model.init``; ignored when resuming); it is
    copied, never donated, so the caller can reuse it.
    ``eval_hook(step, params) -> dict | None``: called every ``eval_every`` steps and at the end, on every
    process, after the built-in validation loss; what it returns is logged as ``eval/<key>``.
    ``devices``: the devices of the mesh (default all).
    Returns a :class:`TrainResult`; raises :class:`TrainingDiverged` on a NaN/Inf loss.
    """
    maybe_initialize_distributed(run.distributed)
    out_dir = Path(run.out_dir)
    is_main = jax.process_index() == 0
    mesh = make_mesh(run.mesh, devices)
    n_dev = mesh.size
    model_cfg = resolve_model_config(run.model)
    data = build_data(run, model_cfg, host_index=jax.process_index(), host_count=jax.process_count(),
                      n_devices=n_dev)
    steps_per_epoch = data.train.steps_per_epoch
    total = run.steps if run.steps is not None else int(math.ceil(run.epochs * steps_per_epoch))
    spec = StepSpec(model_cfg, run.objective, run.optim, total, run.data.accum_steps, run.packed, run.seed, mesh,
                    run.mesh.param_sharding)
    sh, abstract = state_shardings(spec)
    tx = make_optimizer(run.optim, total)

    ckpt_dir = run.checkpoint.dir or str(out_dir / "checkpoints")  # a str: may be gs://...
    store = CheckpointStore(ckpt_dir, keep=run.checkpoint.keep, async_save=run.checkpoint.async_save)
    state = None
    source = None
    try:
        steps_on_disk = store.all_steps()
        if steps_on_disk and run.checkpoint.resume == "never":
            raise CheckpointError(f"{ckpt_dir}: holds checkpoints {steps_on_disk} but checkpoint.resume=never; "
                                  "choose another out_dir or checkpoint.resume=auto")
        if not steps_on_disk and run.checkpoint.resume == "require":
            raise CheckpointError(f"{ckpt_dir}: no checkpoint to resume from (checkpoint.resume=require)")
        if steps_on_disk and run.checkpoint.resume != "never":
            step0 = run.checkpoint.restore_step if run.checkpoint.restore_step is not None else steps_on_disk[-1]
            meta = store.restore_meta(step0)
            if "model_config" in meta:
                _check_same_shape(model_config_from_dict(meta["model_config"]), model_cfg, f"{ckpt_dir}/{step0}")
            tgt = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
            params, tr, _ = store.restore(step0, jax.tree.map(tgt, abstract["params"], sh["params"]),
                                          jax.tree.map(tgt, {"step": abstract["step"],
                                                             "opt_state": abstract["opt_state"]},
                                                       {"step": sh["step"], "opt_state": sh["opt_state"]}))
            state = {"step": tr["step"], "params": params, "opt_state": tr["opt_state"]}
            source = f"resumed:{ckpt_dir}@{step0}"
        else:
            params, source = _initial_params(run, model_cfg, sh["params"], init_params)
            opt_state = jax.jit(tx.init, out_shardings=sh["opt_state"])(params)
            state = {"step": jax.device_put(jnp.int32(0), sh["step"]), "params": params, "opt_state": opt_state}
        start = int(_host(state["step"]))
    except BaseException:
        store.close()
        raise

    meta_base = {"model_config": model_config_to_dict(model_cfg), "tokenizer_dir": data.tokenizer_dir,
                 "run_config": to_dict(run), "steps_per_epoch": steps_per_epoch, "total_steps": total,
                 "mesh": dict(mesh.shape), "process_count": jax.process_count()}
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "run_config.yaml").write_text(dump_run_config(run))
        (out_dir / "run_meta.json").write_text(json.dumps({**meta_base, "init": source}, indent=2) + "\n")
    logger = MetricsLog(out_dir, enabled=is_main, tensorboard=run.tensorboard, resume_step=start)
    service = _preemption_service()
    flag = None if service else _SignalFlag(run.checkpoint.save_on_signal)
    step_fn = build_train_step(spec)
    b_sh = batch_sharding(mesh)
    hosts = jax.process_count()
    history: list[dict] = []
    evals: list[dict] = []
    pbar = None
    if is_main and run.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
    log.info("training %s: %d params, steps %d..%d (%d/epoch), mesh %s, init %s", model_cfg.model_type,
             model_cfg.num_params(), start, total, steps_per_epoch, dict(mesh.shape), source)

    def save(step: int) -> None:
        store.save(step, state["params"], state["opt_state"], {**meta_base, "step": step,
                                                               "epoch": step / steps_per_epoch},
                   state_step=state["step"])

    def run_evals(step: int) -> None:
        rec = {"kind": "eval", "step": step}
        if data.valid is not None:
            ev = build_eval_sums(spec)
            tot = {"batch": 0.0, "mslm": 0.0, "kl": 0.0}
            cnt = 0.0
            for i in range(min(run.data.valid_batches, data.valid.steps_per_epoch)):
                vb = global_batch(device_batch(data.valid.batch_at(i)), b_sh, hosts)
                key = jax.random.fold_in(jax.random.PRNGKey(run.seed + 7919), i)
                sums, c = ev(state["params"], vb, key)
                for k in tot:
                    tot[k] += float(_host(sums[k]))
                cnt += float(_host(c))
            terms = {k: v / max(cnt, 1.0) for k, v in tot.items()}
            o = run.objective
            rec.update({"eval/loss": o.w_batch * terms["batch"] + o.w_mslm * terms["mslm"] + o.kl_lambda * terms["kl"],
                        **{f"eval/{k}": v for k, v in terms.items()}, "eval/tokens": cnt})
        if eval_hook is not None:
            extra = eval_hook(step, state["params"])
            if extra:
                rec.update({(k if k.startswith("eval/") else f"eval/{k}"): v for k, v in extra.items()})
        if len(rec) > 2:
            evals.append(rec)
            logger.write(rec)

    pending: list[tuple[int, Any, float]] = []
    last_t = [time.perf_counter()]

    def flush(keep: int = 0) -> None:
        while len(pending) > keep:
            s, m, t_disp = pending.pop(0)
            rec = _fetch(m)
            now = time.perf_counter()
            dt = now - last_t[0]
            last_t[0] = now
            if not rec.pop("finite"):
                good = store.latest_step()
                where = f"{ckpt_dir}/{good}" if good is not None else "none (no checkpoint was written)"
                raise TrainingDiverged(
                    f"step {s + 1}: non-finite loss or gradient (loss={rec['loss']}, grad_norm={rec['grad_norm']}); "
                    f"the update was skipped and the run stopped. Last good checkpoint: {where}. Lower optim.lr, "
                    f"raise warmup, or check the data at step {s} (data position = step).")
            rec = {"kind": "train", "step": s + 1, **rec, "step_time_s": dt,
                   "tokens_per_s": rec["seq_tokens"] / dt if dt > 0 else 0.0,
                   "epoch": (s + 1) / steps_per_epoch}
            if s == start:
                rec["first_step_s"] = t_disp
            history.append(rec)
            logger.write(rec)
            if pbar is not None:
                pbar.update(1)
                if (s + 1) % max(run.log_every, 1) == 0 or s + 1 == total:
                    pbar.set_postfix({"loss": f"{rec['loss']:.4f}", "batch": f"{rec['batch']:.4f}",
                                      "mslm": f"{rec['mslm']:.4f}", "kl": f"{rec['kl']:.4f}",
                                      "tok/s": f"{rec['tokens_per_s']:.0f}"}, refresh=False)

    stopped = "done"
    try:
        batches: Iterator[dict] = data.train.batches_from(start)
        every = run.checkpoint.every
        for s in range(start, total):
            batch = global_batch(device_batch(next(batches)), b_sh, hosts)
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch)
            pending.append((s, metrics, time.perf_counter() - t0))
            flush(keep=1)  # fetch the previous step's metrics while this one runs
            done = s + 1
            periodic = every > 0 and done % every == 0 and done != total
            evaluate = run.eval_every > 0 and done % run.eval_every == 0 and done != total
            if periodic or evaluate:
                flush()
            if evaluate:
                run_evals(done)
            # every process checks at every boundary (multi-host: the flag is agreed on collectively)
            if done != total and run.checkpoint.save_on_signal and _should_stop(flag, done):
                flush()
                save(done)
                store.wait()
                stopped = "signal"
                log.warning("stopped by signal at step %d; checkpoint saved in %s; rerun the same command to resume",
                            done, ckpt_dir)
                break
            if periodic:
                save(done)
        else:
            flush()
            if run.eval_every > 0 or eval_hook is not None:
                run_evals(total)
            if run.checkpoint.save_final and total > start:
                save(total)
        store.wait()
    finally:
        if flag is not None:
            flag.restore()
        if pbar is not None:
            pbar.close()
        logger.close()
        store.close()
    final_step = int(_host(state["step"]))
    return TrainResult(state["params"], history, out_dir, final_step, stopped, evals, model_cfg, ckpt_dir)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export(run_dir: str | Path, step: int | None = None, out_hf_dir: str | Path | None = None, *,
           dtype: str = "float32", tokenizer_dir: str | Path | None = None, max_shard_size: str = "5GB") -> Path:
    """Write the params of ``run_dir`` (a run or checkpoints directory) at ``step`` (default latest) as a
    Hugging Face directory; the tokenizer is copied from ``tokenizer_dir`` or the run's tokenizer."""
    from ..models.hf import save_pretrained

    if out_hf_dir is None:
        raise ValueError("export: out_hf_dir is required")
    cfg, params, meta, step = restore_params(run_dir, step)
    tok = tokenizer_dir or meta.get("tokenizer_dir")
    if tok is not None and not Path(tok).is_dir():
        log.warning("tokenizer directory %s of the run does not exist; exporting without a tokenizer", tok)
        tok = None
    out = save_pretrained(cfg, params, out_hf_dir, tokenizer_dir=tok, dtype=dtype, max_shard_size=max_shard_size)
    log.info("exported step %d of %s to %s", step, run_dir, out)
    return Path(out)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (e.g. configs/tiny-synthetic.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, YAML-typed (e.g. steps=200 out_dir=runs/x mesh.fsdp=4)")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_train(args: argparse.Namespace) -> int:
    _setup_logging()
    try:
        cfg = load_run_config(args.config, args.overrides)
    except (RunConfigError, FileNotFoundError) as e:
        print(f"proactive-jax train: {e}", file=sys.stderr)
        return 2
    try:
        res = train(cfg)
    except (RunConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"proactive-jax train: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"proactive-jax train: {e}", file=sys.stderr)
        return 3
    if jax.process_index() == 0:
        last = res.history[-1] if res.history else {}
        print(json.dumps({"out_dir": str(res.out_dir), "step": res.step, "stopped": res.stopped,
                          "loss": last.get("loss"), "eval": res.evals[-1] if res.evals else None}))
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    """``proactive-jax train CONFIG [key=value ...]``."""
    p = argparse.ArgumentParser(prog="proactive-jax train", description="train a streaming LLM (MSLM + SPSD)")
    add_train_args(p)
    return run_train(p.parse_args(argv))


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run directory (or its checkpoints/ directory)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="stored dtype of the weights (default float32)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: the run's)")
    p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors above this size")


def run_export(args: argparse.Namespace) -> int:
    _setup_logging()
    try:
        out = export(args.checkpoint, args.step, args.out, dtype=args.dtype, tokenizer_dir=args.tokenizer,
                     max_shard_size=args.max_shard_size)
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"proactive-jax export: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def export_main(argv: Sequence[str] | None = None) -> int:
    """``proactive-jax export --checkpoint RUN_DIR [--step N] --out HF_DIR``."""
    p = argparse.ArgumentParser(prog="proactive-jax export", description="write a checkpoint as a HF directory")
    add_export_args(p)
    return run_export(p.parse_args(argv))
