"""The training loop: :func:`train` runs (or resumes) a run described by a ``RunConfig``.

**The device-parallel step.** The design card's "pmapped train step" is one ``jax.jit`` over a
``jax.sharding.Mesh`` with axes ``("data", "fsdp")`` (:mod:`.mesh`, :mod:`.step`): ``jax.pmap`` is in
maintenance mode since JAX 0.8 and cannot shard parameters, so the sharded jit *is* the device-parallel step.

**Multi-host.** ``jax.distributed.initialize()`` runs when a pod / cluster is detected (or when asked);
every host builds the same deterministic data plan and feeds its own rows with
``jax.make_array_from_process_local_data``; only process 0 writes logs, metrics and exports; all processes
take part in checkpointing (orbax).

**Checkpoints and resume.** See :mod:`.checkpoint`. The data position is the step (batches are a pure
function of the step; a streamed train set, ``audio.stream``, also saves every host's stream state in the
checkpoint meta and resumes from it) and the schedule RNG is derived from the step, so a resumed run continues exactly:
N straight steps == N/2 steps + SIGTERM + resume for N/2 (tested). SIGTERM sets a flag; the loop saves at
the next step boundary and returns cleanly. On multi-host runs JAX's preemption service (started by
``jax.distributed.initialize``) takes the SIGTERM and ``multihost_utils.reached_preemption_sync_point``
makes every process stop and save at the same step (without that service the flag is all-gathered).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax

from proactive_jax.errors import CheckpointError
from proactive_jax.models.config import ModelConfig
from proactive_jax.models.kinds import model_config_to_dict
from proactive_jax.training.checkpoint import CheckpointStore
from proactive_jax.training.batches import device_batch
from proactive_jax.training.data import build_data
from proactive_jax.training.logs import MetricsLog, SignalFlag, preemption_service, should_stop
from proactive_jax.training.mesh import batch_sharding, global_batch, make_mesh, maybe_initialize_distributed
from proactive_jax.config import to_dict
from proactive_jax.training.run_config import RunConfig, dump_run_config
from proactive_jax.training.state import resolve_model_config, restore_or_init
from proactive_jax.training.trees import host_value
from proactive_jax.training.step import StepSpec, build_eval_sums, build_train_step, make_spec, make_state_optimizer, state_shardings

log = logging.getLogger(__name__)


from proactive_jax.errors import TrainingDiverged  # noqa: E402,F401  (re-exported: loop.TrainingDiverged)


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
    signum: int | None = None  # the signal that stopped the run (SIGTERM / SIGINT), if any


def _fetch(metrics) -> dict:
    return {k: (bool(host_value(v)) if k == "finite" else float(host_value(v))) for k, v in metrics.items()}


def validation_terms(run: RunConfig, spec: StepSpec, params, valid, b_sh) -> dict:
    """Token-averaged batch / MSLM / KL terms (and their weighted total) of ``run.data.valid_batches``
    validation batches, with the train step's shardings and fixed schedule keys."""
    ev = build_eval_sums(spec)
    tot = {"batch": 0.0, "mslm": 0.0, "kl": 0.0}
    cnt = 0.0
    for i in range(min(run.data.valid_batches, valid.steps_per_epoch)):
        vb = global_batch(device_batch(valid.batch_at(i)), b_sh, jax.process_count())
        key = jax.random.fold_in(jax.random.PRNGKey(run.seed + 7919), i)
        sums, c = ev(params, vb, key)
        for k in tot:
            tot[k] += float(host_value(sums[k]))
        cnt += float(host_value(c))
    terms = {k: v / max(cnt, 1.0) for k, v in tot.items()}
    o = run.objective
    return {"eval/loss": o.w_batch * terms["batch"] + o.w_mslm * terms["mslm"] + o.kl_lambda * terms["kl"],
            **{f"eval/{k}": v for k, v in terms.items()}, "eval/tokens": cnt}


class _StepRecords:
    """Turns each step's device metrics into a logged record one step late (so fetching them overlaps the
    next step), and stops the run on a non-finite step."""

    def __init__(self, logger: MetricsLog, store: CheckpointStore, start: int, total: int, steps_per_epoch: int,
                 log_every: int, pbar):
        self.logger, self.store, self.start, self.total = logger, store, start, total
        self.steps_per_epoch, self.log_every, self.pbar = steps_per_epoch, log_every, pbar
        self.pending: list[tuple[int, Any, float]] = []
        self.history: list[dict] = []
        self.last_t = time.perf_counter()

    def add(self, s: int, metrics, dispatch_s: float) -> None:
        self.pending.append((s, metrics, dispatch_s))

    def flush(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            s, m, t_disp = self.pending.pop(0)
            rec = _fetch(m)
            now = time.perf_counter()
            dt, self.last_t = now - self.last_t, now
            if not rec.pop("finite"):
                good = self.store.latest_step()
                where = f"{self.store.directory}/{good}" if good is not None else "none (no checkpoint was written)"
                raise TrainingDiverged(
                    f"step {s + 1}: non-finite loss or gradient (loss={rec['loss']}, grad_norm={rec['grad_norm']}); "
                    f"the update was skipped and the run stopped. Last good checkpoint: {where}. Lower optim.lr, "
                    f"raise warmup, or check the data at step {s} (data position = step).")
            rec = {"kind": "train", "step": s + 1, **rec, "step_time_s": dt,
                   "tokens_per_s": rec["seq_tokens"] / dt if dt > 0 else 0.0, "epoch": (s + 1) / self.steps_per_epoch}
            if s == self.start:
                rec["first_step_s"] = t_disp
            self.history.append(rec)
            self.logger.write(rec)
            self._progress(rec, s)

    def _progress(self, rec: dict, s: int) -> None:
        if self.pbar is None:
            return
        self.pbar.update(1)
        if (s + 1) % max(self.log_every, 1) == 0 or s + 1 == self.total:
            self.pbar.set_postfix({"loss": f"{rec['loss']:.4f}", "batch": f"{rec['batch']:.4f}",
                                   "mslm": f"{rec['mslm']:.4f}", "kl": f"{rec['kl']:.4f}",
                                   "tok/s": f"{rec['tokens_per_s']:.0f}"}, refresh=False)


def _write_run_files(out_dir: Path, run: RunConfig, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run_config.yaml").write_text(dump_run_config(run))
    (out_dir / "run_meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _progress_bar(run: RunConfig, is_main: bool, start: int, total: int):
    if not (is_main and run.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)


def _run_steps(run: RunConfig, step_fn, state, data, b_sh, records: _StepRecords, start: int, total: int, flag,
               save: Callable, run_evals: Callable, *, final_eval: bool):
    """Steps ``start..total``: periodic checkpoints and evals, stop-and-save on a signal; ``(state, stopped)``."""
    batches: Iterator[dict] = data.train.batches_from(start)
    every = run.checkpoint.every
    for s in range(start, total):
        batch = global_batch(device_batch(next(batches)), b_sh, jax.process_count())
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        records.add(s, metrics, time.perf_counter() - t0)
        records.flush(keep=1)  # fetch the previous step's metrics while this one runs
        done = s + 1
        periodic = every > 0 and done % every == 0 and done != total
        evaluate = run.eval_every > 0 and done % run.eval_every == 0 and done != total
        if periodic or evaluate:
            records.flush()
        if evaluate:
            run_evals(done, state["params"])
        # every process checks at every boundary (multi-host: the flag is agreed on collectively)
        if done != total and run.checkpoint.save_on_signal and should_stop(flag, done):
            records.flush()
            save(done, state)
            records.store.wait()
            log.warning("stopped by signal at step %d; checkpoint saved in %s; rerun the same command to resume",
                        done, records.store.directory)
            return state, "signal"
        if periodic:
            save(done, state)
    records.flush()
    if final_eval:
        run_evals(total, state["params"])
    if run.checkpoint.save_final and total > start:
        save(total, state)
    return state, "done"


@contextlib.contextmanager
def run_dir_lock(out_dir: Path):
    """Hold ``<out_dir>/.train.lock`` (an exclusive ``flock``) while a run uses ``out_dir``; a second run on the same
    directory is refused with one line. The kernel drops the lock when the process ends, killed or not, so a crashed
    run never leaves it stuck (the file stays, unlocked)."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".train.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise CheckpointError(f"{out_dir}: another training run (pid {holder}) is using this directory; wait for "
                                  "it to finish or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


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
    local = "://" not in str(run.out_dir)  # a local directory (not gs://...): one run at a time holds it
    lock = run_dir_lock(Path(run.out_dir)) if local and jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train(run, init_params, eval_hook, devices)


def _train(run: RunConfig, init_params, eval_hook, devices) -> TrainResult:
    out_dir = Path(run.out_dir)
    is_main = jax.process_index() == 0
    mesh = make_mesh(run.mesh, devices)
    model_cfg = resolve_model_config(run.model, run.audio)
    data = build_data(run, model_cfg, host_index=jax.process_index(), host_count=jax.process_count(),
                      n_devices=mesh.size)
    steps_per_epoch = data.train.steps_per_epoch
    total = run.steps if run.steps is not None else int(math.ceil(run.epochs * steps_per_epoch))
    spec = make_spec(run, model_cfg, mesh, total)
    sh, abstract = state_shardings(spec)
    ckpt_dir = run.checkpoint.dir or str(out_dir / "checkpoints")  # a str: may be gs://...
    store = CheckpointStore(ckpt_dir, keep=run.checkpoint.keep, async_save=run.checkpoint.async_save)
    try:
        state, source = restore_or_init(run, model_cfg, store, sh, abstract, make_state_optimizer(spec),
                                        init_params)
        start = int(host_value(state["step"]))
        if start > 0 and source.startswith("resumed") and hasattr(data.train, "restore_stream"):
            # a streamed train set (audio.stream): its state at `start` is in that checkpoint's meta
            from proactive_jax.training.audio_batches import STREAM_META_KEY

            data.train.restore_stream(store.restore_meta(start).get(STREAM_META_KEY), start)
    except BaseException:
        store.close()
        raise

    meta_base = {"model_config": model_config_to_dict(model_cfg), "tokenizer_dir": data.tokenizer_dir,
                 "run_config": to_dict(run), "steps_per_epoch": steps_per_epoch, "total_steps": total,
                 "mesh": dict(mesh.shape), "process_count": jax.process_count()}
    if is_main:
        _write_run_files(out_dir, run, {**meta_base, "init": source})
    logger = MetricsLog(out_dir, enabled=is_main, tensorboard=run.tensorboard, resume_step=start)
    flag = None if preemption_service() else SignalFlag(run.checkpoint.save_on_signal)
    step_fn = build_train_step(spec)
    b_sh = batch_sharding(mesh)
    evals: list[dict] = []
    pbar = _progress_bar(run, is_main, start, total)
    records = _StepRecords(logger, store, start, total, steps_per_epoch, run.log_every, pbar)
    log.info("training %s: %d params, steps %d..%d (%d/epoch), mesh %s, init %s", model_cfg.model_type,
             sum(int(a.size) for a in jax.tree.leaves(abstract["params"])), start, total, steps_per_epoch, dict(mesh.shape), source)

    def save(step: int, st) -> None:
        meta = {**meta_base, "step": step, "epoch": step / steps_per_epoch}
        if hasattr(data.train, "stream_state"):  # audio.stream: every host's stream state (exact resume)
            from proactive_jax.training.audio_batches import STREAM_META_KEY

            meta[STREAM_META_KEY] = data.train.stream_state()
        store.save(step, st["params"], st["opt_state"], meta, state_step=st["step"])

    def run_evals(step: int, params) -> None:
        rec = {"kind": "eval", "step": step}
        if data.valid is not None:
            rec.update(validation_terms(run, spec, params, data.valid, b_sh))
        if eval_hook is not None:
            extra = eval_hook(step, params)
            if extra:
                rec.update({(k if k.startswith("eval/") else f"eval/{k}"): v for k, v in extra.items()})
        if len(rec) > 2:
            evals.append(rec)
            logger.write(rec)

    try:
        state, stopped = _run_steps(run, step_fn, state, data, b_sh, records, start, total, flag, save, run_evals,
                                    final_eval=run.eval_every > 0 or eval_hook is not None)
        store.wait()
    finally:
        if flag is not None:
            flag.restore()
        if pbar is not None:
            pbar.close()
        logger.close()
        store.close()
    final_step = int(host_value(state["step"]))
    signum = flag.signum if (flag is not None and stopped == "signal") else None
    return TrainResult(state["params"], records.history, out_dir, final_step, stopped, evals, model_cfg, ckpt_dir,
                       signum)
