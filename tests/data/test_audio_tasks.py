"""Speech dataset adapters on rows built in each dataset's schema and on the shipped WAV + JSONL fixtures."""
from pathlib import Path

import numpy as np
import pytest

from proactive_jax.data import audio_tasks as AT
from proactive_jax.data.audio import write_wav
from proactive_jax.data.tasks import RowRef
from proactive_jax.errors import DataError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "audio"


def _wav_bytes(x):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return write_wav(Path(d) / "x.wav", x).read_bytes()


def test_manifest_fixtures_load_offline():
    items = AT.load_manifest(FIX / "manifest.jsonl")
    assert [it.id for it in items] == ["tone_a", "tone_b", "tone_c"]
    assert [round(it.waveform.size / 16000, 2) for it in items] == [0.6, 1.1, 0.3]
    assert items[1].prompt_text.endswith("Question: what did the cat do")
    assert items[0].target_text == "HELLO WORLD" and items[0].waveform.dtype == np.float32


def test_manifest_errors(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "missing.wav", "text": "x"}\n')
    with pytest.raises(DataError, match=r"m.jsonl.*line|row 1.*missing.wav: audio file does not exist"):
        AT.load_manifest(m)
    m.write_text('{"audio": "a.wav"\n')
    with pytest.raises(DataError, match=r"m.jsonl:1: not valid JSON"):
        AT.load_manifest(m)
    write_wav(tmp_path / "st.wav", np.zeros(10, np.float32))
    m.write_text('{"audio": "st.wav", "text": "x"}\n')
    with pytest.raises(DataError, match="silent audio"):
        AT.load_manifest(m)


def test_librispeech_rows_datasets_and_tfds_layouts():
    x = (0.2 * np.sin(np.arange(8000) / 3.0)).astype(np.float32)
    decoded = {"file": "a.flac", "audio": {"path": "a.flac", "array": x, "sampling_rate": 16000},
               "text": "HELLO THERE", "speaker_id": 7, "chapter_id": 1, "id": "7-1-0000"}
    it = AT.librispeech(decoded, RowRef("openslr/librispeech_asr:clean", "test", 0))
    assert it.id == "7-1-0000" and it.target_text == "HELLO THERE" and it.waveform.size == 8000
    undecoded = dict(decoded, audio={"path": "a.wav", "bytes": _wav_bytes(x)})
    it2 = AT.librispeech(undecoded)
    assert np.abs(it2.waveform - x).max() < 1e-4
    tfds_row = {"speech": (x * 32767).astype(np.int16), "text": b"HELLO THERE", "speaker_id": np.int64(7),
                "chapter_id": 1, "id": b"7-1-0000"}
    it3 = AT.librispeech(tfds_row)
    assert it3.id == "7-1-0000" and np.abs(it3.waveform - x).max() < 1e-3
    with pytest.raises(DataError, match="row 3: field 'text' is missing or empty"):
        AT.librispeech(dict(decoded, text=""), RowRef("ls", "test", 3))
    with pytest.raises(DataError, match="sampling rate 8000 Hz|stereo|mono"):
        AT.librispeech(dict(decoded, audio={"array": np.stack([x, x]), "sampling_rate": 16000}))


def test_librispeech_through_datasets_with_decode_false(tmp_path):
    datasets = pytest.importorskip("datasets")
    x = (0.2 * np.sin(np.arange(4000) / 3.0)).astype(np.float32)
    ds = datasets.Dataset.from_dict({"audio": [{"path": "a.wav", "bytes": _wav_bytes(x)}], "text": ["HI"],
                                     "id": ["0"]}).cast_column("audio", datasets.Audio(decode=False))
    ds.save_to_disk(str(tmp_path / "ls"))
    from proactive_jax.data.loaders import DatasetSpec

    rows = AT.load_audio_rows(DatasetSpec(source="disk", path=str(tmp_path / "ls"), split="train"))
    items = AT.adapt_audio_rows(rows, "librispeech", dataset="ls", split="train")
    assert items[0].target_text == "HI" and np.abs(items[0].waveform - x).max() < 1e-4
    spec = AT.librispeech_spec("other", "test")
    assert (spec.path, spec.name, spec.split) == ("openslr/librispeech_asr", "other", "test")
    with pytest.raises(ValueError, match="librispeech config 'dirty'"):
        AT.librispeech_spec("dirty")


def test_spoken_squad_rows():
    x = (0.2 * np.sin(np.arange(16000) / 3.0)).astype(np.float32)
    row = {"context": {"array": x, "sampling_rate": 16000}, "instruction": "Who wrote it?", "answer": "Denver Broncos"}
    it = AT.spoken_squad(row, RowRef("AudioLLMs/spoken_squad_test_v1", "test", 0))
    assert it.prompt_text.endswith("Question: Who wrote it?") and it.references == ("Denver Broncos",)
    # 44.1 kHz audio is resampled, not rejected
    row44 = dict(row, context={"array": np.sin(np.arange(44100) / 9.0), "sampling_rate": 44100})
    assert AT.spoken_squad(row44).waveform.size == 16000
    with pytest.raises(DataError, match="missing field 'instruction'"):
        AT.spoken_squad({"context": row["context"], "answer": "x"})
