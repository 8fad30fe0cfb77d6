"""The bounded-memory, per-host, resumable audio example stream (proactive_jax.data.audio_stream)."""

import io
import json
import resource
import wave

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("array_record")

from proactive_jax.data.audio import mel_project, window_features, write_wav  # noqa: E402
from proactive_jax.data.audio_sources import (ManifestSource, SyntheticAudioSource, decode_record,  # noqa: E402
                                              encode_record, prepare_audio)
from proactive_jax.data.audio_stream import AudioFeatures, audio_example_stream, reference_features  # noqa: E402
from proactive_jax.models.audio import output_lengths  # noqa: E402
from proactive_jax.data.synthetic import load_tokenizer  # noqa: E402
from proactive_jax.errors import DataError  # noqa: E402

SMALL = AudioFeatures(num_mel_bins=80, window_frames=200)  # 2 s windows: fast tests


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def short_source(n, seed=0):
    return SyntheticAudioSource(n, seed=seed, min_seconds=0.3, max_seconds=1.9)


def take(stream, k):
    return [next(stream) for _ in range(k)]


def same(a, b):
    assert [e["id"] for e in a] == [e["id"] for e in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["features"], y["features"])
        np.testing.assert_array_equal(x["target"], y["target"])
        assert x["valid_frames"] == y["valid_frames"]


def wav_bytes(x, rate=16000, channels=1):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- features

@pytest.mark.parametrize("clamp", ["running", "utterance"])
def test_window_features_equal_the_full_window_reference(clamp):
    rng = np.random.default_rng(0)
    for bins, frames, n in [(80, 200, 1), (80, 200, 150), (80, 200, 401), (80, 200, 16000), (80, 200, 31800),
                            (80, 200, 32000), (128, 3000, 16000 * 7 + 33)]:
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        np.testing.assert_allclose(window_features(x, bins, frames, clamp), reference_features(x, bins, frames, clamp),
                                   atol=1e-6, err_msg=f"{n} samples")


@pytest.mark.parametrize("bins", [80, 128])
def test_sparse_mel_projection_equals_the_matmul(bins):
    from proactive_jax.data.audio import mel_filters

    p = np.random.default_rng(1).random((37, 201)) ** 4
    np.testing.assert_allclose(mel_project(p, bins), p @ mel_filters(bins), rtol=1e-12, atol=1e-300)


# ------------------------------------------------------------------------------------------- records, sources

def test_record_round_trip_keeps_bytes_and_samples():
    b = wav_bytes(np.zeros(10))
    r = decode_record(encode_record({"audio": {"bytes": b}, "text": "a b", "id": b"x1", "speaker_id": 7}))
    assert r == {"audio": {"bytes": b}, "text": "a b", "id": "x1", "speaker_id": 7}
    s = np.arange(-5, 5, dtype=np.int16)
    r = decode_record(encode_record({"audio": {"array": s, "sampling_rate": 8000}, "text": "t"}))
    np.testing.assert_array_equal(r["audio"]["array"], s)
    assert r["audio"]["array"].dtype == np.int16 and r["audio"]["sampling_rate"] == 8000
    with pytest.raises(DataError, match="not a proactive-jax audio record"):
        decode_record(b"garbage-bytes")


def test_prepare_audio_from_an_iterable_streams_like_the_rows(tmp_path, tok):
    src = short_source(13)
    rows = (src[i] for i in range(len(src)))  # iterable only, like a streaming dataset
    index = prepare_audio(rows, tmp_path / "shards", rows_per_shard=5)
    assert index["rows"] == 13 and index["counts"] == [5, 5, 3]
    a = take(audio_example_stream(tmp_path / "shards", tokenizer=tok, features=SMALL, seed=3), 20)
    b = take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=3), 20)
    same(a, b)
    with pytest.raises(DataError, match="prepare_audio"):
        audio_example_stream((r for r in []), tokenizer=tok)


def test_tfds_and_datasets_flac_rows_through_array_record(tmp_path, tok):
    sf = pytest.importorskip("soundfile")
    pcm = np.round(0.3 * np.sin(np.arange(12000) / 4.0) * 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="FLAC", subtype="PCM_16")
    rows = [{"speech": pcm, "text": b"ONE TWO", "id": b"84-121123-0000", "speaker_id": 84},  # tfds librispeech
            {"audio": {"path": "x.flac", "bytes": buf.getvalue()}, "text": "ONE TWO", "id": "flac"}]  # datasets
    prepare_audio(iter(rows), tmp_path / "ar")
    ex = {e["id"]: e for e in audio_example_stream(tmp_path / "ar", tokenizer=tok, features=SMALL, num_epochs=1)}
    assert sorted(ex) == ["84-121123-0000", "flac"] and ex["flac"]["text"] == "ONE TWO"
    # lossless FLAC; data.audio scales int16 arrays by 1/32767, soundfile by 1/32768: 2.6e-5 apart in log power
    np.testing.assert_allclose(ex["flac"]["features"], ex["84-121123-0000"]["features"], atol=2e-5)
    np.testing.assert_array_equal(ex["flac"]["target"], tok.encode("ONE TWO", add_special_tokens=False))
    assert ex["flac"]["valid_frames"] == 75 and ex["flac"]["audio_tokens"] == output_lengths(75)[1]


def test_manifest_directory_source(tmp_path, tok):
    lines = []
    for i in range(4):
        write_wav(tmp_path / f"u{i}.wav", 0.2 * np.sin(np.arange(4000 + 800 * i) / 7.0))
        lines.append(json.dumps({"audio": f"u{i}.wav", "text": f"word{i} two", "id": f"utt{i}"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    ex = take(audio_example_stream(tmp_path / "m.jsonl", tokenizer=tok, features=SMALL, num_epochs=1), 4)
    assert sorted(e["id"] for e in ex) == [f"utt{i}" for i in range(4)]
    for e in ex:
        i = int(e["id"][3:])
        assert e["valid_frames"] == -(-(4000 + 800 * i) // 160)
    (tmp_path / "u2.wav").unlink()
    src = ManifestSource(tmp_path / "m.jsonl")
    assert len(src) == 4
    with pytest.raises(DataError, match=r"m\.jsonl row 2 \(id 'utt2'\).*does not exist"):
        take(audio_example_stream(src, tokenizer=tok, features=SMALL, num_epochs=1), 4)


def test_prepare_audio_cli_on_the_shipped_manifest(tmp_path, tok, capsys):
    from pathlib import Path

    from proactive_jax.cli import main

    fix = Path(__file__).resolve().parents[1] / "fixtures" / "audio" / "manifest.jsonl"
    assert main(["prepare-audio", str(fix), str(tmp_path / "out"), "--rows-per-shard", "2"]) == 0
    assert "3 rows" in capsys.readouterr().out
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["rows"] == 3 and index["counts"] == [2, 1]
    a = {e["id"]: e for e in audio_example_stream(tmp_path / "out", tokenizer=tok, features=SMALL, num_epochs=1)}
    b = {e["id"]: e for e in audio_example_stream(fix, tokenizer=tok, features=SMALL, num_epochs=1)}
    assert sorted(a) == ["tone_a", "tone_b", "tone_c"] and a["tone_b"]["question"] == "what did the cat do"
    same([a[k] for k in sorted(a)], [b[k] for k in sorted(b)])
    # bad input: one line each, naming what and where
    (tmp_path / "gone.jsonl").write_text(json.dumps({"audio": "missing.wav", "text": "x"}) + "\n")
    cases = [([str(fix), str(tmp_path / "out")], "already holds a prepared set"),
             ([str(tmp_path / "nope.jsonl"), str(tmp_path / "o2")], "nope.jsonl: manifest does not exist"),
             ([str(tmp_path / "gone.jsonl"), str(tmp_path / "o3")], "gone.jsonl:1: audio file"),
             ([str(fix), str(tmp_path / "o4"), "--rows-per-shard", "0"], "--rows-per-shard=0"),
             (["hub:", str(tmp_path / "o5")], "empty dataset name")]
    for argv, needle in cases:
        assert main(["prepare-audio", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert main(["prepare-audio", str(fix), str(tmp_path / "out"), "--max-rows", "1", "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "index.json").read_text())["rows"] == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audio-00000.array_record", "index.json"]


def test_spoken_squad_rows_carry_question_and_answer(tmp_path, tok):
    """AudioLLMs Spoken-SQuAD rows ({context: audio, instruction: question, answer}) -> audio, question, text = the
    first answer; through prepare_audio and as map-style rows; a row without a question is bad when required."""
    x = 0.2 * np.sin(np.arange(9000) / 5.0)
    rows = [{"context": {"path": None, "bytes": wav_bytes(x)}, "instruction": "Who came?", "answer": [" Bob ", "bob"]},
            {"context": {"array": x.astype(np.float32), "sampling_rate": 16000}, "instruction": b"Where?",
             "answer": "Paris"},
            {"context": {"array": x.astype(np.float32), "sampling_rate": 16000}, "answer": "no question"}]
    prepare_audio(iter(rows), tmp_path / "sqa")
    for src in (tmp_path / "sqa", rows):
        ex = sorted(audio_example_stream(src, tokenizer=tok, features=SMALL, num_epochs=1, on_bad_audio="skip",
                                         require_question=True), key=lambda e: e["index"])
        assert [(e["question"], e["text"]) for e in ex] == [("Who came?", "Bob"), ("Where?", "Paris")]
        np.testing.assert_array_equal(ex[0]["target"], tok.encode("Bob", add_special_tokens=False))
    with pytest.raises(DataError, match="row 2.*'question' is missing"):
        take(audio_example_stream(rows, tokenizer=tok, features=SMALL, num_epochs=1, seed=1,
                                  require_question=True), 3)


# ------------------------------------------------------------------------------------------- order, hosts, resume

def test_resume_from_saved_state_equals_uninterrupted(tok):
    src = short_source(9)
    full = take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=5), 25)  # crosses 2 epochs
    for k in (0, 4, 9, 13):
        s = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=5)
        head = take(s, k)
        state = json.loads(json.dumps(s.get_state()))  # JSON: goes into the checkpoint's meta
        s.close()
        resumed = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=5, state=state)
        same(head + take(resumed, 25 - k), full)
    at = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=5, position=13, keep_waveform=True)
    tail = take(at, 12)
    same(tail, full[13:])
    ref = src[int(tail[0]["index"])]["audio"]["array"]
    np.testing.assert_array_equal(tail[0]["waveform"], ref)
    other = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=6)
    with pytest.raises(DataError, match="seed=5"):
        other.set_state(state)


def test_state_resumes_through_an_orbax_checkpoint(tmp_path, tok):
    from proactive_jax.training.checkpoint import CheckpointStore

    src = short_source(6)
    full = take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=4, host_index=1, host_count=2), 9)
    s = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=4, host_index=1, host_count=2)
    head = take(s, 5)
    store = CheckpointStore(tmp_path / "ckpt", async_save=False)
    store.save(3, {"w": np.zeros(2, np.float32)}, {"m": np.zeros(2, np.float32)}, {"audio_stream": s.get_state()})
    store.close()
    meta = CheckpointStore(tmp_path / "ckpt", read_only=True).restore_meta(3)
    resumed = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=4, host_index=1, host_count=2,
                                   state=meta["audio_stream"])
    same(head + take(resumed, 4), full)


def test_epochs_are_permutations_and_hosts_are_disjoint_and_cover(tok):
    n = 10
    src = short_source(n)
    whole = [int(e["index"]) for e in take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=1), 3 * n)]
    epochs = [whole[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    hosts = [[int(e["index"]) for e in take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=1,
                                                                  host_index=h, host_count=2), n)] for h in (0, 1)]
    assert hosts[0] == whole[0::2][:n] and hosts[1] == whole[1::2][:n]
    first_epoch = [hosts[h][:n // 2] for h in (0, 1)]
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == list(range(n))
    finite = list(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=1, num_epochs=1))
    assert [int(e["index"]) for e in finite] == epochs[0]


def test_worker_processes_give_the_same_stream_and_portable_state(tok):
    src = short_source(7)
    ref = take(audio_example_stream(src, tokenizer=tok, features=SMALL, seed=2), 10)
    s0 = audio_example_stream(src, tokenizer=tok, features=SMALL, seed=2)
    head = take(s0, 3)
    with audio_example_stream(src, tokenizer=tok, features=SMALL, seed=2, num_workers=2, state=s0.get_state()) as s2:
        same(head + take(s2, 7), ref)


# ------------------------------------------------------------------------------------------- bad rows

def bad_rows():
    ok = {"audio": {"bytes": wav_bytes(0.2 * np.sin(np.arange(8000) / 5.0))}, "text": "fine", "id": "ok"}
    return [
        ok,
        {"audio": {"bytes": b"RIFF\x00\x00not-audio-at-all"}, "text": "x", "id": "garbage"},
        {"audio": {"array": np.ones(8000, np.float32) * 0.1, "sampling_rate": 8000}, "text": "x", "id": "rate"},
        {"audio": {"array": np.ones((2, 8000), np.float32) * 0.1, "sampling_rate": 16000}, "text": "x", "id": "st"},
        {"audio": {"array": np.zeros(0, np.float32), "sampling_rate": 16000}, "text": "x", "id": "empty"},
        {"audio": {"array": np.ones(16000 * 3, np.float32) * 0.1, "sampling_rate": 16000}, "text": "x", "id": "long"},
        {"audio": {"bytes": wav_bytes(0.2 * np.sin(np.arange(8000) / 5.0))}, "text": "  ", "id": "notext"},
    ]


@pytest.mark.parametrize("rid, match", [("garbage", "garbage"), ("rate", "sampling rate 8000 Hz"),
                                        ("st", "expected mono"), ("empty", "empty audio"),
                                        ("long", "longer than the configured maximum"), ("notext", "transcript")])
def test_bad_row_is_one_line_error_naming_it(tok, rid, match):
    rows = [r for r in bad_rows() if r["id"] in ("ok", rid)]
    with pytest.raises(DataError, match=match) as e:
        list(audio_example_stream(rows, tokenizer=tok, features=SMALL, num_epochs=1))
    msg = str(e.value)
    assert "\n" not in msg and f"(id {rid!r})" in msg and "row 1" in msg


def test_bad_rows_are_counted_skips_under_skip_policy(tok):
    s = audio_example_stream(bad_rows(), tokenizer=tok, features=SMALL, num_epochs=2, on_bad_audio="skip")
    out = list(s)
    assert [e["id"] for e in out] == ["ok", "ok"]
    assert sum(s.skipped.values()) == 12 and s.get_state()["skipped"] == s.skipped
    assert set(s.skipped) == {"undecodable", "sampling rate", "stereo", "empty audio", "longer than", "transcript"}


# ------------------------------------------------------------------------------------------- memory

def test_peak_memory_does_not_grow_with_stream_length(tok):
    import tracemalloc

    s = audio_example_stream(short_source(2000), tokenizer=tok, features=SMALL, num_epochs=1)
    tracemalloc.start()
    try:
        take(s, 200)
        now_200, peak_200 = tracemalloc.get_traced_memory()
        rss_200 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
        n = 200 + sum(1 for _ in s)
        now_2000, peak_2000 = tracemalloc.get_traced_memory()
        rss_2000 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    finally:
        tracemalloc.stop()
    assert n == 2000
    # holding the 1,800 later examples' features alone would take 1800 * 80 * 200 * 4 B = 115 MB
    mb = 1 << 20
    assert now_2000 - now_200 < 2 * mb and peak_2000 - peak_200 < 4 * mb, (now_200, now_2000, peak_200, peak_2000)
    assert rss_2000 - rss_200 < 16 * 1024, (rss_200, rss_2000)
