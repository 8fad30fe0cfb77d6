"""What a run reports and how it is stopped: metrics JSONL + TensorBoard, SIGTERM and preemption."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl`` (every record) + TensorBoard (``tensorboard``: needs tensorboardX); a no-op off process 0."""

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
        if tensorboard:  # off by default (run config `tensorboard`); asked for but unavailable: one notice
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning("tensorboard=true but tensorboardX is not installed: TensorBoard logging off, metrics "
                            "go to %s only (pip install tensorboardX, or set tensorboard=false)", self.path)
            else:
                try:
                    self.tb = SummaryWriter(str(out_dir / "tb"))
                except Exception as e:  # noqa: BLE001 - optional
                    log.warning("TensorBoard logging off: %s (metrics go to %s only)", e, self.path)

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


class SignalFlag:
    """SIGTERM and SIGINT (Ctrl-C) -> a flag read at the next step boundary, where the loop saves and stops.

    Installed only in the main thread. A second Ctrl-C while waiting for the boundary interrupts at once
    (``KeyboardInterrupt``; the last completed checkpoint stays intact)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled: bool):
        self.signum = None
        self.prev: dict = {}
        self.installed = enabled and threading.current_thread() is threading.main_thread()
        if self.installed:
            for s in self.SIGNALS:
                self.prev[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        name = signal.Signals(signum).name
        print(f"proactive_jax.training: received {name}; saving a checkpoint at the next step boundary"
              + (" (Ctrl-C again to stop at once without saving)" if signum == signal.SIGINT else ""),
              file=sys.stderr, flush=True)

    def restore(self):
        if self.installed:
            for s, prev in self.prev.items():
                signal.signal(s, prev if prev is not None else signal.SIG_DFL)
            self.installed = False


def preemption_service() -> bool:
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


def should_stop(flag: "SignalFlag | None", step: int) -> bool:
    """Stop at this step boundary? Single process: our SIGTERM flag. Multi-process: JAX's preemption sync
    point (every process gets True at the same step); without that service, the flag all-gathered."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if flag is None:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return bool(np.any(multihost_utils.process_allgather(np.int32(flag.signum is not None))))
    return flag is not None and flag.signum is not None


