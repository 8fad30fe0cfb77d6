"""`proactive-jax eval task=librispeech|spoken-squad` on the shipped WAV + JSONL fixtures (tiny random model)."""
import json

from proactive_jax.cli import main
from tests.helpers import AUDIO_FIXTURES as FIX


def test_eval_librispeech_task_on_manifest(audio_checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", f"checkpoint={audio_checkpoint}", "task=librispeech", "dataset.source=files",
               f"dataset.path={FIX / 'manifest.jsonl'}", "calibration_split=null", "num_examples=3",
               "heads=[batch, 'wait-k:k=1|2']", "max_new_tokens=3", "metric=wer-whisper",
               "adapter_options={chunk_ms: 200}", f"out_dir={out}", "progress=false"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads((out / "results.json").read_text())
    settings = {s["setting"]: s for s in res["settings"]}
    assert set(settings) == {"batch", "wait-k:k=1", "wait-k:k=2"}
    for s in settings.values():
        assert s["quality"]["normaliser"] == "whisper" and s["n"] == 3
    assert settings["batch"]["latency"]["rco"] == 1.0
    assert settings["wait-k:k=1"]["latency"]["rco"] < 1.0


def test_eval_audio_task_needs_an_audio_checkpoint(tmp_path, capsys):
    rc = main(["eval", f"checkpoint={tmp_path / 'none'}", "task=spoken-squad", "dataset.source=files",
               f"dataset.path={FIX / 'manifest.jsonl'}"])
    assert rc == 2 and "none" in capsys.readouterr().err
