"""The device mesh and how arrays are laid out on it.

Distributed start-up (``jax.distributed.initialize`` when a pod / cluster is detected), the
``("data", "fsdp")`` mesh, the parameter / optimizer-state / batch shardings (data parallel = batch sharded,
params replicated; FSDP = params sharded on their largest divisible axis too), and placing host data onto
the mesh (multi-host safe).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from proactive_jax.errors import ConfigError

from proactive_jax.training.run_config import MeshSection

log = logging.getLogger(__name__)


BATCH_AXES = ("data", "fsdp")


MESH_AXES = ("data", "fsdp")


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
        raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp may be -1")
    if data == -1:
        if fsdp <= 0 or n % fsdp:
            raise ConfigError(f"mesh.fsdp={fsdp} does not divide the {n} devices")
        data = n // fsdp
    if fsdp == -1:
        if data <= 0 or n % data:
            raise ConfigError(f"mesh.data={data} does not divide the {n} devices")
        fsdp = n // data
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ConfigError(f"mesh: data={sec.data} x fsdp={sec.fsdp} does not match the {n} devices "
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


def path_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def text_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """A qwen2_audio decoder leaf (``language_model/...``) named as in a text model."""
    return path[1:] if path and path[0] == "language_model" else path


def stacked(path: tuple[str, ...]) -> bool:
    """Whether the leaf's first axis is the scanned layer axis (decoder ``layers/...``, ``audio_tower/layers/...``)."""
    return "layers" in path[:2]


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
    path = text_path(path)
    skip = 1 if stacked(path) else 0
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
        lambda p, a: NamedSharding(mesh, param_partition_spec(path_keys(p), tuple(a.shape), fsdp)), abstract_params)


def opt_state_shardings(abstract_opt, abstract_params, p_shardings, mesh: Mesh):
    """Optimizer-state leaves that mirror a parameter (Adam's mu/nu) get its sharding; others replicate."""
    by_path = {}
    for (path, a), (_, s) in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                 jax.tree_util.tree_flatten_with_path(p_shardings)[0]):
        by_path[path_keys(path)] = (tuple(a.shape), s)

    def pick(path, leaf):
        hit = by_path.get(path_keys(path))
        if hit is not None and hit[0] == tuple(leaf.shape):
            return hit[1]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, abstract_opt)


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
# Small multi-host collectives on host values
# ---------------------------------------------------------------------------------------------

def allgather_max(values: np.ndarray) -> np.ndarray:
    """Elementwise max of an int vector over all processes (one small collective per step, multi-host only)."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64))).max(axis=0)


def allgather_json(obj, size: int = 16384) -> list:
    """Every process's JSON-able ``obj`` (index = process; at most ``size`` bytes of JSON each), e.g. for the
    checkpoint meta that one process writes."""
    import json

    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return [obj]
    raw = json.dumps(obj, sort_keys=True).encode()
    if len(raw) > size:
        raise ValueError(f"a process state of {len(raw)} bytes exceeds {size}")
    buf = np.zeros(size, np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    got = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(r).rstrip(b"\0")) for r in got]
