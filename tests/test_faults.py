"""Fault injection against the CLIs: signals at random steps (subprocesses) with bitwise resume, a full disk,
permission errors, corrupt and truncated checkpoints, rollback, stale eval directories, offline loaders.

Cost: one tiny training run in process (the TINY spec of tests/training/test_loop.py, so its compiled step is
shared) that every case copies and damages; three training subprocesses (SIGINT, SIGKILL, ENOSPC) started at
module start and collected by the tests that need them; one short offline CLI subprocess. Every error a user
causes must end as ONE line on stderr with exit code 2, never a traceback.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from proactive_jax import cli
from proactive_jax.training.checkpoint import CheckpointStore, restore_params
from tests.subprocs import Procs, cpu_env
from tests.training.util import CONFIG, N, TINY, max_diff


@pytest.fixture(scope="module", autouse=True)
def _fresh_compilation_caches():
    """Drop the executables earlier modules compiled: a whole-suite run segfaulted inside XLA's CPU compiler
    in this module's first in-process train (as once in tests/training/test_audio_train.py); fewer live
    executables, less risk."""
    import jax

    jax.clear_caches()
    yield

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random(int(os.environ.get("FAULT_SEED", time.time_ns() % 10_000)))

# a training run through the real CLI entry point, with a fault at step AT: SIGINT, SIGKILL, or a full disk
# (every later open-for-write under the checkpoint directory raises OSError(ENOSPC), as a full disk does)
WORKER = textwrap.dedent("""
    import builtins, errno, json, os, signal, sys
    from proactive_jax import cli
    from proactive_jax.training import loop
    mode, at, args = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    real_add = loop._StepRecords.add
    def full_disk():
        real_open = builtins.open
        def open_(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and "checkpoints" in str(file):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return real_open(file, mode, *a, **k)
        builtins.open = open_
    def add(self, s, m, t):
        real_add(self, s, m, t)
        if s + 1 == at:
            if mode == "int":
                os.kill(os.getpid(), signal.SIGINT)
            elif mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                full_disk()
    loop._StepRecords.add = add
    sys.exit(cli.main(["train", *args]))
""")


def _env(**extra) -> dict:
    return cpu_env(8, **extra)


def _train_args(out_dir, *extra) -> list:
    return [str(CONFIG), *TINY, f"out_dir={out_dir}", *extra]


class Faults(Procs):
    """The fault subprocesses, started when the module starts."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        (tmp / "worker.py").write_text(WORKER)
        # kill and enospc at >= 6: saves are asynchronous, and the save of step 4 starts only once the save of
        # step 2 has completed, so by step 6 at least one checkpoint is complete (a kill at step 4 once found
        # none: the save of step 2 was still in flight)
        self.at = {"int": RNG.randint(1, N - 1), "kill": RNG.randint(6, N - 1), "enospc": RNG.randint(6, N - 3)}
        for mode, at in self.at.items():
            args = _train_args(tmp / mode, "checkpoint.every=2", "checkpoint.keep=10")
            self.start(mode, [str(tmp / "worker.py"), mode, str(at), json.dumps(args)], _env(), pipe_stderr=True)

    def result(self, mode, timeout=300):
        rc, err = self.wait(mode, timeout)
        assert rc is not None, f"{mode} worker hung"
        return rc, err, self.tmp / mode, self.at[mode]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    f = Faults(tmp_path_factory.mktemp("faults"))
    yield f
    f.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, faults):
    """The reference run: 12 steps, checkpoints at 4, 8, 12 (in process, through ``cli.main``)."""
    out = tmp_path_factory.mktemp("trained")
    assert cli.main(["train", *_train_args(out, "checkpoint.every=4", "checkpoint.keep=10")]) == 0
    assert CheckpointStore(out / "checkpoints", read_only=True).all_steps() == [4, 8, 12]
    return out


def _one_line_error(capsys, rc, code=2, *needles):
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    last = err.splitlines()[-1] if err else ""
    assert "Traceback" not in err and last.startswith("proactive-jax "), err
    for n in needles:
        assert n in last, (n, last)
    return last


def _losses(run_dir) -> list:
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]


def _params(run, step=None):
    return restore_params(run, step)[1]


def _data_files(step_dir: Path) -> list:
    return sorted((f for f in (step_dir / "params").rglob("*") if f.is_file() and "/d/" in str(f)),
                  key=lambda f: f.stat().st_size)


# ---------------------------------------------------------------------------------------------
# Signals and a full disk (subprocesses), each resumed to the reference bit for bit
# ---------------------------------------------------------------------------------------------

def test_sigint_saves_exits_130_and_resumes_bitwise(trained, faults, capsys):
    rc, err, run, at = faults.result("int")
    assert rc == 130 and "Traceback" not in err, err[-3000:]
    assert "received SIGINT" in err
    assert CheckpointStore(run / "checkpoints", read_only=True).all_steps()[-1] == at
    assert cli.main(["train", *_train_args(run, "checkpoint.every=2", "checkpoint.keep=10")]) == 0
    assert max_diff(_params(run, N), _params(trained, N)) == 0.0, f"SIGINT at step {at}"
    assert _losses(run) == _losses(trained)


def test_sigkill_resumes_bitwise_from_the_last_complete_checkpoint(trained, faults):
    rc, err, run, at = faults.result("kill")
    assert rc == -9, err[-3000:]
    steps = CheckpointStore(run / "checkpoints", read_only=True).all_steps()
    assert steps and steps[-1] <= at and all(s % 2 == 0 for s in steps), (at, steps)
    assert cli.main(["train", *_train_args(run, "checkpoint.every=2", "checkpoint.keep=10")]) == 0
    assert max_diff(_params(run, N), _params(trained, N)) == 0.0, f"SIGKILL at step {at}"
    assert _losses(run) == _losses(trained)


def test_full_disk_is_one_line_keeps_checkpoints_and_resumes(trained, faults, capsys):
    rc, err, run, at = faults.result("enospc")
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    assert last.startswith("proactive-jax train: ") and "No space left on device" in last, last
    ckpt = run / "checkpoints"
    steps = CheckpointStore(ckpt, read_only=True).all_steps()
    # the saves before the disk filled are intact (the one in flight may have failed too); each verifies
    assert steps and steps == list(range(2, steps[-1] + 1, 2)) and at - 4 <= steps[-1] < at, (at, steps)
    for s in steps:
        restore_params(run, s)
    assert cli.main(["train", *_train_args(run, "checkpoint.every=2", "checkpoint.keep=10")]) == 0
    assert not [p for p in ckpt.iterdir() if "tmp" in p.name]  # the killed save's temporary is gone
    assert max_diff(_params(run, N), _params(trained, N)) == 0.0


# ---------------------------------------------------------------------------------------------
# Corrupt and truncated checkpoints, rollback
# ---------------------------------------------------------------------------------------------

def test_corrupt_checkpoint_bytes_are_detected_everywhere(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # flip 4 bytes in the middle of every params data file (which OCDBT file holds the leaves varies between
    # runs: flipping only the largest one once missed every leaf in a full-suite run)
    for f in _data_files(run / "checkpoints" / str(N)):
        raw = bytearray(f.read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 4] = bytes(b ^ 0x5A for b in raw[mid:mid + 4])
        f.write_bytes(bytes(raw))
    rc = cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")])
    line = _one_line_error(capsys, rc, 2, f"checkpoints/{N}")
    assert "checksum mismatch" in line or "cannot restore" in line
    assert not (tmp_path / "hf").exists()
    # bytes that are valid for the storage layer but not what was saved (step 8's params under step 12's
    # name): only the per-leaf checksums can tell
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    shutil.rmtree(other / "checkpoints" / str(N) / "params")
    shutil.copytree(other / "checkpoints" / "8" / "params", other / "checkpoints" / str(N) / "params")
    rc = cli.main(["decode", "--checkpoint", str(other), "--head", "batch", "--text", "a b"])
    line = _one_line_error(capsys, rc, 2, f"checkpoints/{N} (params): tensor ", "checksum mismatch")
    assert "embed_tokens/embedding" in line or "layers/" in line
    rc = cli.main(["train", *_train_args(run, "checkpoint.every=4", "checkpoint.keep=10")])
    _one_line_error(capsys, rc, 2, f"checkpoints/{N}", "on_corrupt=fallback")
    # told to fall back: resumes from the newest intact step (8), sets 12 aside and retrains it exactly
    rc = cli.main(["train", *_train_args(run, "checkpoint.every=4", "checkpoint.keep=10",
                                         "checkpoint.on_corrupt=fallback")])
    assert rc == 0, capsys.readouterr().err
    assert CheckpointStore(run / "checkpoints", read_only=True).all_steps() == [4, 8, 12]
    assert [p.name.split("-")[0] for p in (run / "checkpoints" / "rolled_back").iterdir()] == [str(N)]
    assert max_diff(_params(run, N), _params(trained, N)) == 0.0


def test_rollback_makes_the_restored_step_the_live_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    args = _train_args(run, "checkpoint.every=4", "checkpoint.keep=2", "checkpoint.restore_step=4")
    assert cli.main(["train", *args]) == 0
    store = CheckpointStore(run / "checkpoints", read_only=True)
    assert store.all_steps() == [8, 12] and store.rolled_back_to() == 4  # keep=2 kept the new line
    aside = sorted(p.name.split("-")[0] for p in (run / "checkpoints" / "rolled_back").glob("*-*"))
    assert aside == ["12", "8"]
    assert max_diff(_params(run, N), _params(trained, N)) == 0.0
    assert cli.main(["train", *args]) == 0  # the same command again resumes; it does not roll back twice
    assert CheckpointStore(run / "checkpoints", read_only=True).all_steps() == [8, 12]


def test_export_load_verify_truncated_and_nan_safetensors(trained, tmp_path, capsys, caplog):
    from proactive_jax.models.hf import keep_on_host, load_pretrained
    from proactive_jax.models.hf_export import save_pretrained

    hf = tmp_path / "hf"
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(hf)]) == 0
    capsys.readouterr()
    st = hf / "model.safetensors"
    good = st.read_bytes()
    raw = bytearray(good)
    raw[-5] ^= 0x01  # one bit of the last tensor
    st.write_bytes(bytes(raw))
    _one_line_error(capsys, cli.main(["hf-check", str(hf)]), 2, "CRC-32 mismatch", "model.safetensors")
    st.write_bytes(good[: len(good) - 100])
    _one_line_error(capsys, cli.main(["hf-check", str(hf)]), 2, "truncated")
    # NaN weights load with a warning naming the tensor, and hf-check says so instead of "tolerance"
    st.write_bytes(good)
    cfg, params = load_pretrained(hf, place=keep_on_host)
    params["norm"]["weight"][3] = np.nan
    save_pretrained(cfg, params, tmp_path / "nan", tokenizer_dir=hf)
    with caplog.at_level("WARNING", logger="proactive_jax.models.hf"):
        load_pretrained(tmp_path / "nan", place=keep_on_host)
    assert "model.norm.weight holds 1 non-finite values" in caplog.text
    assert cli.main(["hf-check", str(tmp_path / "nan")]) == 1
    assert "non-finite weights in ['norm']['weight']" in capsys.readouterr().err


def test_permission_errors_and_stale_export_temporaries(trained, tmp_path, capsys, monkeypatch):
    import errno

    from proactive_jax.models import hf as H

    # a killed export left its temporary (dead pid, old): removed by name and age; a fresh or foreign one stays
    (tmp_path / ".out.tmp-999999999-0123abcd").mkdir()
    (tmp_path / ".out.tmp-999999999-0123abcd" / "model.safetensors").write_bytes(b"x")
    os.utime(tmp_path / ".out.tmp-999999999-0123abcd", (time.time() - 3600,) * 2)
    (tmp_path / ".out.tmp-999999998-4567cdef").mkdir()  # young: could still be running elsewhere
    (tmp_path / ".outer.tmp-999999999-0123abcd").mkdir()  # another directory's
    (tmp_path / "notes.tmp-999999999-0123abcd").mkdir()
    os.utime(tmp_path / ".outer.tmp-999999999-0123abcd", (time.time() - 3600,) * 2)
    assert cli.main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "out")]) == 0
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".out.tmp-999999998-4567cdef", ".outer.tmp-999999999-0123abcd", "notes.tmp-999999999-0123abcd",
                    "out"], left
    capsys.readouterr()

    def denied(path, *a, **k):  # root ignores chmod, so the permission error is injected at the call
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(H.os, "mkdir", denied)
    rc = cli.main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "out2")])
    _one_line_error(capsys, rc, 2, "Permission denied", "out2")
    monkeypatch.undo()
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.geteuid() != 0:  # a real read-only directory where permissions apply
            rc = cli.main(["train", *_train_args(ro / "run")])
            _one_line_error(capsys, rc, 2, "Permission denied")
    finally:
        os.chmod(ro, 0o700)


# ---------------------------------------------------------------------------------------------
# Config-time validation, stale eval directories, offline loaders
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("checkpoint.keep=0", "keep=0"), ("checkpoint.keep=-1", "keep=-1"), ("steps=0", "steps=0"),
    ("checkpoint.every=-1", "every=-1"), ("eval_every=-2", "eval_every=-2"), ("log_every=-1", "log_every=-1"),
    ("data.buckets=[[4, 4]]", "no usable examples"), ("data.task=nope", "data.task='nope'"),
])
def test_bad_train_inputs_are_one_line_and_touch_nothing(trained, tmp_path, capsys, override, needle):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if "cache" not in p.parts)
    rc = cli.main(["train", *_train_args(run, override)])
    _one_line_error(capsys, rc, 2, needle)
    assert CheckpointStore(run / "checkpoints", read_only=True).all_steps() == [4, 8, 12]
    if override.startswith(("checkpoint", "steps", "eval", "log")):  # refused before anything was written
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if "cache" not in p.parts) == before


def test_stale_eval_directory_is_refused_then_fresh(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    common = ["task=lookup", "heads=[batch]", "num_examples=4", "calibration_split=null", "max_new_tokens=6",
              "batch_size=4", "progress=false", f"out_dir={out}"]
    assert cli.main(["eval", f"checkpoint={trained}", "step=8", *common]) == 0
    a = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    rc = cli.main(["eval", f"checkpoint={trained}", "step=12", *common])
    _one_line_error(capsys, rc, 2, "holds the records of another evaluation", "the model's weights", "fresh=true")
    assert json.loads((out / "results.json").read_text()) == a  # untouched
    rc = cli.main(["eval", f"checkpoint={trained}", "step=8", *common, "max_new_tokens=5"])
    _one_line_error(capsys, rc, 2, "max_new_tokens")
    assert cli.main(["eval", f"checkpoint={trained}", "step=12", *common, "fresh=true"]) == 0
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["info"]["step"] == 12
    assert cli.main(["eval", f"checkpoint={trained}", "step=12", *common]) == 0  # same fingerprint: resumes
    assert "batch_size=0" in _one_line_error(capsys, cli.main(["eval", f"checkpoint={trained}", *common,
                                                                 "batch_size=0"]), 2)


OFFLINE_CASES = [  # the CLI path (one line, exit 2); the in-process test below covers the probe and tfds
    ("{source: hub, path: rajpurkar/squad}", {"HF_DATASETS_OFFLINE": "1"}),
]


def test_offline_loaders_fail_fast_with_one_line(trained, tmp_path):
    procs = []
    for k, (dataset, env) in enumerate(OFFLINE_CASES):
        home = tmp_path / f"home{k}"
        home.mkdir()
        e = _env(HOME=str(home), HF_HOME=str(home / "hf"), TFDS_DATA_DIR=str(tmp_path / f"tfds{k}"), **env)
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if name not in env:
                e.pop(name, None)
        cmd = [sys.executable, "-m", "proactive_jax", "eval", f"checkpoint={trained}", "task=squad",
               f"dataset={dataset}", "heads=[batch]", "progress=false", f"out_dir={tmp_path / f'e{k}'}"]
        procs.append((dataset, home, time.time(), subprocess.Popen(cmd, env=e, cwd=str(ROOT), text=True,
                                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for dataset, home, t0, p in procs:
        _, err = p.communicate(timeout=120)
        took = time.time() - t0
        last = err.strip().splitlines()[-1]
        assert p.returncode == 2 and "Traceback" not in err, err[-3000:]
        assert last.startswith("proactive-jax eval: ") and took < 100, (took, last)  # start-up + model load
        assert "could not fetch dataset 'rajpurkar/squad'" in last and "dataset.source=disk" in last, last


def test_offline_loaders_in_process_take_seconds_and_leave_home_alone(tmp_path, monkeypatch):
    from proactive_jax.data import loaders as L
    from proactive_jax.errors import DataError, OfflineError

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(L, "_PROBED", {})
    for spec in (L.DatasetSpec("hub", "proactive-jax-tests/no-such-dataset", split="validation"),
                 L.DatasetSpec("tfds", "squad", name="v1.1", split="validation")):
        t0 = time.time()
        with pytest.raises(DataError) as e:
            L.load_rows(spec)
        took = time.time() - t0
        assert took < 20, (spec, took)  # the probe waits 3 s at most; tfds retried for minutes before
        if not L.host_reachable("storage.googleapis.com"):  # no network (CI): the offline error says what to do
            assert isinstance(e.value, OfflineError) and "DIR" in str(e.value), e.value
    assert not list(tmp_path.iterdir()), "a loader wrote into $HOME"


def test_silently_accepted_inputs_are_refused():
    from proactive_jax.method.heads import resolve_layers

    with pytest.raises(ValueError, match=r"layers='-9:': slice bound -9 out of range .* 2 layers"):
        resolve_layers("-9:", 2)
    assert resolve_layers("-2:", 2) == (0, 1) and resolve_layers(":", 2) == (0, 1)
