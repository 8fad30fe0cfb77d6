"""Orbax checkpoints of a training run: params, optimizer state + step, and a JSON meta record.

Layout: ``<dir>/<step>/{params, train, meta}`` (one ``orbax.checkpoint.CheckpointManager`` step each):

- ``params``: the float32 master weights (what ``export`` and ``model.init=checkpoint`` read alone),
- ``train``: ``{"step": int32, "opt_state": optax state}``,
- ``meta``: JSON: the step, the model config (``ModelConfig`` fields), the tokenizer directory, the run
  config and the data position (the step: batches are a pure function of the step, see
  ``data.pipeline``; the read-schedule RNG is ``fold_in(key(seed), step)``, so nothing else is needed).

Saves are asynchronous (the arrays are copied off the devices, then written in a background thread) and
atomic: orbax writes into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact. Restoring takes *target shardings* (``jax.ShapeDtypeStruct`` with a
``sharding``), so a checkpoint saved on one mesh restores onto any other mesh shape. Every process of a
multi-host run calls ``save``/``restore`` (orbax coordinates; process 0 finalizes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax

from ..models.config import ModelConfig, _freeze_rope_scaling

log = logging.getLogger(__name__)

ITEMS = ("params", "train", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, partial or corrupt; the message names the directory and step."""


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def model_config_to_dict(cfg: ModelConfig) -> dict:
    d = dataclasses.asdict(cfg)
    if cfg.rope_scaling is not None:
        d["rope_scaling"] = dict(cfg.rope_scaling)
    if isinstance(cfg.eos_token_id, tuple):
        d["eos_token_id"] = list(cfg.eos_token_id)
    return d


def model_config_from_dict(d: dict) -> ModelConfig:
    d = dict(d)
    d["rope_scaling"] = _freeze_rope_scaling(d.get("rope_scaling"))
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = tuple(d["eos_token_id"])
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in names})


def as_path(path):
    """An ``etils.epath.Path`` (local paths made absolute; ``gs://...`` kept), so GCS checkpoint dirs work."""
    from etils import epath

    s = str(path)
    if "://" in s:
        return epath.Path(s)
    return epath.Path(Path(s).absolute())


def resolve_dir(path: str | Path):
    """A run directory (holding ``checkpoints/``) or a checkpoints directory -> the checkpoints directory."""
    p = as_path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint directory does not exist")
    if not p.is_dir():
        raise CheckpointError(f"{p}: expected a run or checkpoint directory, got a file")
    if (p / "checkpoints").is_dir():
        return p / "checkpoints"
    return p


class CheckpointStore:
    """A thin wrapper over ``orbax.checkpoint.CheckpointManager`` with the errors this package wants."""

    def __init__(self, directory: str | Path, *, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        ocp = _ocp()
        self.directory = as_path(directory)
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: checkpoint directory does not exist")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
            read_only=read_only, save_interval_steps=1)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # -- queries -----------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        return sorted(int(s) for s in self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def check_step(self, step: int) -> Path:
        """The directory of ``step``, after checking that it is a complete checkpoint of this layout."""
        steps = self.all_steps()
        d = self.directory / str(step)
        if step not in steps or not d.is_dir():
            raise CheckpointError(f"{self.directory}: no checkpoint for step {step} (available: {steps or 'none'})")
        missing = [n for n in ITEMS if not (d / n).is_dir()]
        if missing or not (d / "_CHECKPOINT_METADATA").is_file():
            what = f"items {missing} missing" if missing else "_CHECKPOINT_METADATA missing"
            raise CheckpointError(self._bad(step, f"partial checkpoint ({what})"))
        return d

    def _bad(self, step: int, why: str) -> str:
        others = [s for s in self.all_steps() if s != step]
        hint = (f"; other steps: {others} (restore one with checkpoint.restore_step=N, or move "
                f"{self.directory / str(step)} aside)") if others else "; no other checkpoint in this directory"
        return f"{self.directory / str(step)}: cannot restore step {step}: {why}{hint}"

    # -- save ----------------------------------------------------------------------------------------
    def save(self, step: int, params, opt_state, meta: dict, *, state_step=None) -> bool:
        """Start an (async) save of ``step``; returns False if that step already exists on disk."""
        ocp = _ocp()
        if step in self.all_steps():
            log.warning("checkpoint for step %d already exists in %s; not saving it again", step, self.directory)
            return False
        train = {"step": state_step if state_step is not None else step, "opt_state": opt_state}
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
                                  meta=ocp.args.JsonSave(_jsonable(meta)))
        return bool(self.manager.save(step, args=args, force=True))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- restore -------------------------------------------------------------------------------------
    def restore_meta(self, step: int) -> dict:
        ocp = _ocp()
        self.check_step(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - orbax raises many types; name the step
            raise CheckpointError(self._bad(step, f"meta unreadable ({type(e).__name__}: {e})")) from e
        return dict(out.meta)

    def restore(self, step: int, abstract_params, abstract_train=None) -> tuple[Any, Any, dict]:
        """``(params, train or None, meta)`` of ``step``, placed as the abstract trees' shardings say."""
        ocp = _ocp()
        self.check_step(step)
        items = dict(params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore())
        if abstract_train is not None:
            items["train"] = ocp.args.StandardRestore(abstract_train)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(self._bad(step, f"{type(e).__name__}: {e}")) from e
        return out.params, (out.train if abstract_train is not None else None), dict(out.meta)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return x.item()
        except (ValueError, TypeError):
            pass
    json.dumps(x)  # raises TypeError on anything else
    return x


def restore_params(path: str | Path, step: int | None = None, *, shardings=None,
                   device=None) -> tuple[ModelConfig, Any, dict, int]:
    """Params of a run (``path``: run dir or checkpoints dir) at ``step`` (default latest).

    Placed by ``shardings`` (a tree of ``jax.sharding.Sharding`` matching the params), else on ``device``
    (default: the first CPU device, i.e. host memory). Returns ``(model_config, params, meta, step)``.
    """
    store = CheckpointStore(resolve_dir(path), read_only=True, async_save=False)
    try:
        steps = store.all_steps()
        if not steps:
            raise CheckpointError(f"{store.directory}: holds no checkpoint")
        step = steps[-1] if step is None else int(step)
        meta = store.restore_meta(step)
        if "model_config" not in meta:
            raise CheckpointError(store._bad(step, "meta has no model_config (not written by proactive_jax.training)"))
        cfg = model_config_from_dict(meta["model_config"])
        from ..models.qwen import abstract_params

        abstract = abstract_params(cfg)
        if shardings is None:
            dev = device or jax.local_devices(backend="cpu")[0]
            shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(dev), abstract)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        params, _, meta = store.restore(step, target)
        return cfg, params, meta, step
    finally:
        store.close()

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


