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

**Verification.** ``meta`` also holds ``checksums``: two 32-bit sums per leaf of params and train state
(:func:`tree_digests`: every element's bits mixed with its position, summed with wrap-around; computed on
the devices, exact and independent of the sharding, so any changed element changes the digest). Every
restore recomputes them on the restored arrays and raises :class:`CorruptCheckpointError` naming the step
and the tensor on a mismatch. Orbax temporary directories of a killed save are removed when a writable
store opens (orbax's ``cleanup_tmp_directories``; only names orbax itself gives its temporaries).
"""

from __future__ import annotations

import errno
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax

from proactive_jax.errors import CheckpointError, CorruptCheckpointError
from proactive_jax.models.config import ModelConfig
from proactive_jax.models.kinds import abstract_params_of, model_config_from_dict
from proactive_jax.training.trees import tree_digests

log = logging.getLogger(__name__)

ITEMS = ("params", "train", "meta")



def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def verify_digests(saved: dict | None, restored, where: str, hint: str = "") -> None:
    """Raise :class:`CorruptCheckpointError` naming the first leaf whose digest differs from ``saved``."""
    got = tree_digests(restored)
    bad = [k for k in got if k in saved and saved[k] != got[k]]
    missing = sorted(set(saved) - set(got))
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CorruptCheckpointError(f"{where}: tensor {bad[0]}: checksum mismatch (saved {saved[bad[0]]}, "
                                     f"read {got[bad[0]]}){more}: the checkpoint changed on disk after it was "
                                     f"written{hint}")
    if missing:
        raise CorruptCheckpointError(f"{where}: tensors {missing[:4]} have a saved checksum but were not "
                                     f"restored{hint}")


def _short(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (orbax embeds whole tensorstore specs)."""
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (orbax wraps the errors of its background writes), if any."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


_OS_WORDS = {"No space left on device": errno.ENOSPC, "Permission denied": errno.EACCES,
             "Read-only file system": errno.EROFS, "Disk quota exceeded": errno.EDQUOT}


def _save_failure(directory, step, e: BaseException) -> CheckpointError | None:
    """A one-line :class:`CheckpointError` for a save that failed for an OS reason (full disk, permission)."""
    os_err = _os_error_in(e)
    if os_err is not None:
        why = f"{os_err.strerror or os_err}" + (f" ({os_err.filename})" if os_err.filename else "")
    else:
        text = str(e)
        why = next((w for w in _OS_WORDS if w in text), None)
        if why is None:
            return None
    what = f"saving step {step}" if step is not None else "saving a checkpoint"
    return CheckpointError(f"{directory}: {what} failed: {why}; the checkpoints saved before are intact "
                           "(free space / fix permissions and rerun the same command to resume)")


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
        if keep is not None and keep < 1:
            raise CheckpointError(f"{self.directory}: keep={keep}: expected >= 1 (checkpoint.keep)")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=not read_only,
            read_only=read_only, save_interval_steps=1, cleanup_tmp_directories=not read_only)
        self._saving: int | None = None
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except OSError as e:
            err = _save_failure(self.directory, None, e)
            if err is None:
                raise
            raise err from None

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

    def _hint(self, step: int) -> str:
        others = [s for s in self.all_steps() if s != step]
        if not others:
            return "; no other checkpoint in this directory"
        return (f"; other steps: {others} (restore one with checkpoint.restore_step=N, resume from the newest "
                f"intact one with checkpoint.on_corrupt=fallback, or move {self.directory / str(step)} aside)")

    def _bad(self, step: int, why: str) -> str:
        return f"{self.directory / str(step)}: cannot restore step {step}: {why}{self._hint(step)}"

    # -- save ----------------------------------------------------------------------------------------
    def save(self, step: int, params, opt_state, meta: dict, *, state_step=None) -> bool:
        """Start an (async) save of ``step``; returns False if that step already exists on disk.

        The per-leaf digests of params and train state go into ``meta["checksums"]``. A save that fails
        for an OS reason (disk full, permission), now or in the background, is a :class:`CheckpointError`."""
        ocp = _ocp()
        if step in self.all_steps():
            log.warning("checkpoint for step %d already exists in %s; not saving it again", step, self.directory)
            return False
        self.wait()  # surfaces a failure of the previous background save before starting this one
        train = {"step": state_step if state_step is not None else step, "opt_state": opt_state}
        meta = {**meta, "checksums": {"params": tree_digests(params), "train": tree_digests(train)}}
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
                                  meta=ocp.args.JsonSave(_jsonable(meta)))
        self._saving = step
        try:
            return bool(self.manager.save(step, args=args, force=True))
        except Exception as e:  # noqa: BLE001 - orbax wraps OS errors in several types; name the step
            err = _save_failure(self.directory, step, e)
            if err is None:
                raise
            raise err from None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - the background save's error
            err = _save_failure(self.directory, self._saving, e)
            if err is None:
                raise
            raise err from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    def rolled_back_to(self) -> int | None:
        """The step of the last ``checkpoint.restore_step`` rollback applied to this directory, if any."""
        marker = self.directory / "rolled_back" / "ROLLBACK.json"
        try:
            return int(json.loads(marker.read_text())["restore_step"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def set_aside(self, steps, why: str, *, rollback_to: int | None = None) -> list[str]:
        """Move ``steps`` to ``<dir>/rolled_back/<step>-<unix time>`` (process 0; every process then reloads
        the step list), so they are no longer part of the run's history; returns the new locations."""
        steps = sorted(int(x) for x in steps)
        moved = []
        if steps and jax.process_index() == 0:
            aside = self.directory / "rolled_back"
            aside.mkdir(parents=True, exist_ok=True)
            stamp = int(time.time())
            for st in steps:
                dst = aside / f"{st}-{stamp}"
                (self.directory / str(st)).rename(dst)
                moved.append(str(dst))
            if rollback_to is not None:  # a rerun of the same command then resumes instead of rolling back again
                (aside / "ROLLBACK.json").write_text(json.dumps({"restore_step": rollback_to, "moved": moved,
                                                                 "time": stamp}) + "\n")
            log.warning("%s: moved steps %s to %s (%s)", self.directory, steps, aside, why)
        if steps and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("proactive_jax_set_aside")
        if steps:
            self.manager.reload()
        return moved

    # -- restore -------------------------------------------------------------------------------------
    def restore_meta(self, step: int) -> dict:
        ocp = _ocp()
        self.check_step(step)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - orbax raises many types; name the step
            raise CheckpointError(self._bad(step, f"meta unreadable ({_short(e)})")) from e
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
            raise CheckpointError(self._bad(step, f"unreadable, corrupt or truncated ({_short(e)})")) from e
        meta = dict(out.meta)
        sums = meta.get("checksums")
        where = f"{self.directory / str(step)}"
        if sums is None:
            log.warning("%s: no checksums in this checkpoint (written by an older version); not verified", where)
        else:
            hint = self._hint(step)
            verify_digests(sums.get("params", {}), out.params, f"{where} (params)", hint)
            if abstract_train is not None:
                verify_digests(sums.get("train", {}), out.train, f"{where} (train state)", hint)
        return out.params, (out.train if abstract_train is not None else None), meta


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
        abstract = abstract_params_of(cfg)
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
    from proactive_jax.models.hf_export import save_pretrained

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


