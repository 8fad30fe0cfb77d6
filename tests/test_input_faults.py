"""Bad input that must be one line and exit 2 (or correct behaviour), never a traceback or lost data: a second
training run on a busy directory, a failing prepare-audio (undecodable rows, --overwrite), eval settings that leak
or make no sense."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from proactive_jax.cli import main
from proactive_jax.errors import CheckpointError
from proactive_jax.training.loop import run_dir_lock


def test_a_second_run_on_a_busy_directory_is_refused_and_a_killed_run_leaves_no_stuck_lock(tmp_path):
    with run_dir_lock(tmp_path):
        with pytest.raises(CheckpointError, match=f"another training run \\(pid {os.getpid()}\\)"):
            with run_dir_lock(tmp_path):
                pass
    with run_dir_lock(tmp_path):  # released at exit
        pass
    code = textwrap.dedent(f"""
        import os, pathlib, sys, time
        from proactive_jax.training.loop import run_dir_lock
        with run_dir_lock(pathlib.Path({str(tmp_path)!r})):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match=f"pid {proc.pid}"):
            with run_dir_lock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with run_dir_lock(tmp_path):  # the kernel dropped the killed holder's lock
        pass


def _manifest(tmp_path, name, rows):
    m = tmp_path / f"{name}.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


def _wav(path, seconds=0.3):
    from proactive_jax.data.audio import write_wav

    write_wav(path, (0.1 * np.sin(np.arange(int(16000 * seconds)) / 5)).astype(np.float32), 16000)
    return path


def test_prepare_audio_refuses_undecodable_rows_and_overwrite_keeps_the_old_set(tmp_path, capsys):
    pytest.importorskip("array_record")
    pytest.importorskip("soundfile")
    good = _manifest(tmp_path, "good", [{"audio": str(_wav(tmp_path / f"a{i}.wav")), "text": f"t{i}"} for i in range(3)])
    out = tmp_path / "set"
    assert main(["prepare-audio", str(good), str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "text.wav").write_text("this is not audio\n")
    bad = _manifest(tmp_path, "bad", [{"audio": str(tmp_path / "a0.wav"), "text": "x"},
                                      {"audio": str(tmp_path / "text.wav"), "text": "y"}])
    capsys.readouterr()
    assert main(["prepare-audio", str(bad), str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 1" in err[0] and "not decodable" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, byte for byte
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # no staging directory left behind
    assert main(["prepare-audio", str(bad), str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()  # nothing half-written
    good2 = _manifest(tmp_path, "good2", [{"audio": str(tmp_path / "a1.wav"), "text": "only"}])
    assert main(["prepare-audio", str(good2), str(out), "--overwrite"]) == 0
    assert json.loads((out / "index.json").read_text())["rows"] == 1


@pytest.mark.parametrize("override,needle", [
    (["split=test", "calibration_split=test"], "calibration_split='test' is the evaluated split"),
    (["seconds_per_unit=-1"], "seconds_per_unit=-1"),
    (["calibration_eps=-0.5"], "calibration_eps=-0.5"),
])
def test_eval_settings_that_leak_or_make_no_sense_are_one_line(tmp_path, capsys, override, needle):
    assert main(["eval", f"checkpoint={tmp_path}", "task=lookup", *override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
