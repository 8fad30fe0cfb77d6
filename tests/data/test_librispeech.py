"""The raw LibriSpeech tree (OpenSLR layout): rows, order, errors, decoding, prepare-audio. A tiny tree of short
synthetic FLAC files is written here with soundfile; nothing is downloaded."""
import json

import numpy as np
import pytest

from proactive_jax.data.librispeech import librispeech_rows, load_librispeech, split_dirs
from proactive_jax.errors import DataError

sf = pytest.importorskip("soundfile")

# (split, speaker, chapter, utterances); speakers 174 < 1272 by number but not as text, utterance 10 after 2
TREE = [("dev-clean", 1272, 128104, (0, 2, 10)), ("dev-clean", 174, 50561, (1, 0)), ("dev-clean", 174, 168635, (0,)),
        ("test-clean", 61, 70968, (0, 1))]


def utterance(uid: str, n: int = 1600) -> np.ndarray:
    seed = sum(int(p) for p in uid.split("-"))
    return np.round(np.random.default_rng(seed).uniform(-0.3, 0.3, n) * 32767).astype(np.int16)


def text_of(uid: str) -> str:
    return f"WORDS OF {uid.replace('-', ' ')} AND IT'S DONE"


def make_tree(root, tree=TREE):
    for split, spk, ch, utts in tree:
        d = root / "LibriSpeech" / split / str(spk) / str(ch)
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in utts:
            uid = f"{spk}-{ch}-{u:04d}"
            sf.write(d / f"{uid}.flac", utterance(uid), 16000, subtype="PCM_16")
            lines.append(f"{uid} {text_of(uid)}")
        (d / f"{spk}-{ch}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


DEV_IDS = ["174-50561-0000", "174-50561-0001", "174-168635-0000", "1272-128104-0000", "1272-128104-0002",
           "1272-128104-0010"]


def test_rows_order_and_schema(tmp_path):
    ls = make_tree(tmp_path)
    rows = load_librispeech(ls, "dev-clean")
    assert [r["id"] for r in rows] == DEV_IDS
    r = rows[3]
    flac = ls / "dev-clean" / "1272" / "128104" / "1272-128104-0000.flac"
    assert r == {"id": "1272-128104-0000", "audio": {"path": str(flac)}, "text": text_of("1272-128104-0000"),
                 "speaker_id": 1272, "chapter_id": 128104, "file": str(flac)}
    # the same rows whichever way the split is named or reached
    for root, split in ((ls / "dev-clean", None), (ls / "dev-clean", "dev-clean"), (tmp_path, "dev-clean"),
                        (ls, "validation.clean")):
        assert load_librispeech(root, split) == rows, (root, split)
    both = load_librispeech(ls, "dev-clean+test-clean")
    assert [r["id"] for r in both] == DEV_IDS + ["61-70968-0000", "61-70968-0001"]
    assert [r["id"] for r in librispeech_rows(ls, "dev-clean", max_rows=2)] == DEV_IDS[:2]


def test_split_selection_errors(tmp_path):
    ls = make_tree(tmp_path)
    with pytest.raises(DataError, match=r"holds the splits \['dev-clean', 'test-clean'\]; name one"):
        split_dirs(ls)
    with pytest.raises(DataError, match=r"no split 'train' \(found \['dev-clean', 'test-clean'\]\)"):
        split_dirs(ls, "train")
    with pytest.raises(DataError, match=r"dev-clean: is the LibriSpeech split 'dev-clean', not 'test-clean'"):
        split_dirs(ls / "dev-clean", "test-clean")
    with pytest.raises(DataError, match=r"no LibriSpeech split found"):
        split_dirs(tmp_path / "LibriSpeech" / "dev-clean" / "174" / "50561")
    with pytest.raises(DataError, match=r"nowhere: LibriSpeech directory does not exist"):
        split_dirs(tmp_path / "nowhere")
    make_tree(tmp_path, [("train-clean-100", 19, 198, (0,)), ("train-other-500", 20, 205, (0,))])
    assert [d.name for d in split_dirs(ls, "train")] == ["train-clean-100", "train-other-500"]
    assert [d.name for d in split_dirs(ls / "train-clean-100", "train")] == ["train-clean-100"]
    # the Hub dataset's configs and split names (dataset.name / prepare-audio --config)
    make_tree(tmp_path, [("train-clean-360", 21, 206, (0,)), ("dev-other", 22, 207, (0,))])
    names = lambda split, config: [d.name for d in split_dirs(ls, split, config=config)]  # noqa: E731
    assert names("test", "clean") == ["test-clean"] and names("valid", "clean") == ["dev-clean"]
    assert names("train", "clean") == ["train-clean-100", "train-clean-360"]
    assert names("train", "other") == ["train-other-500"] and names("validation", "other") == ["dev-other"]
    assert names("validation", "all") == ["dev-clean", "dev-other"]
    assert names("train", "all") == ["train-clean-100", "train-clean-360", "train-other-500"]
    assert names("train.clean.360", "all") == ["train-clean-360"] and names("dev-clean", "other") == ["dev-clean"]
    with pytest.raises(DataError, match=r"LibriSpeech config 'clean' has no split 'train.500'"):
        split_dirs(ls, "train.500", config="clean")
    with pytest.raises(DataError, match=r"LibriSpeech config 'noisy'"):
        split_dirs(ls, "test", config="noisy")


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


@pytest.mark.parametrize("edit,pattern", [
    (lambda t: t.replace("174-50561-0001 ", "174-50561-0001"), r"50561.trans.txt:1: expected '<speaker>-<chapter>-"),
    (lambda t: t.replace("174-50561-0001 ", "174_50561_0001 "), r"50561.trans.txt:1: expected '<speaker>-<chapter>-"),
    (lambda t: t.replace("174-50561-0001 ", "175-50561-0001 "), r"50561.trans.txt:1: utterance 175-50561-0001 is "
                                                                 r"not of speaker 174 chapter 50561"),
    (lambda t: t + "174-50561-0000 AGAIN\n", r"50561.trans.txt:3: utterance 174-50561-0000 is listed twice"),
    (lambda t: t + "174-50561-0007 NO AUDIO\n", r"50561.trans.txt:3: audio file .*174-50561-0007.flac does not exist"),
    (lambda t: t.replace(text_of("174-50561-0000"), "  "),
     r"50561.trans.txt:2: utterance 174-50561-0000 has an empty transcript"),
])
def test_malformed_transcripts_are_one_data_error(tmp_path, edit, pattern):
    ls = make_tree(tmp_path)
    trans = ls / "dev-clean" / "174" / "50561" / "174-50561.trans.txt"
    trans.write_text(edit(trans.read_text()))
    with pytest.raises(DataError, match=pattern) as e:
        load_librispeech(ls, "dev-clean")
    _one_line(e)


def test_missing_flac_and_missing_transcript(tmp_path):
    ls = make_tree(tmp_path)
    (ls / "dev-clean" / "1272" / "128104" / "1272-128104-0002.flac").unlink()
    with pytest.raises(DataError, match=r"128104.trans.txt:2: audio file .*1272-128104-0002.flac does not exist") as e:
        load_librispeech(ls, "dev-clean")
    _one_line(e)
    ls2 = make_tree(tmp_path / "b")
    (ls2 / "dev-clean" / "174" / "168635" / "174-168635.trans.txt").unlink()
    with pytest.raises(DataError, match=r"174-168635.trans.txt: transcript file does not exist \(1 FLAC files"):
        load_librispeech(ls2, "dev-clean")
    # a FLAC that no transcript lists is skipped (warned), not an error
    ls3 = make_tree(tmp_path / "c")
    sf.write(ls3 / "dev-clean" / "174" / "50561" / "174-50561-0099.flac", utterance("1-1-1"), 16000)
    assert [r["id"] for r in load_librispeech(ls3, "dev-clean")] == DEV_IDS


def test_rows_decode_through_the_librispeech_adapter(tmp_path):
    from proactive_jax.data.audio_tasks import adapt_audio_rows

    ls = make_tree(tmp_path)
    items = adapt_audio_rows(load_librispeech(ls, "dev-clean"), "librispeech", dataset="LibriSpeech", split="dev-clean")
    assert [it.id for it in items] == DEV_IDS
    it = items[0]
    assert it.target_text == text_of(DEV_IDS[0]) and it.meta == {"speaker_id": 174}
    np.testing.assert_array_equal(it.waveform, utterance(DEV_IDS[0]).astype(np.float32) / 32768)


def test_prepare_audio_openslr_spec(tmp_path):
    pytest.importorskip("array_record")
    pytest.importorskip("grain")
    from proactive_jax.data.audio_sources import ArrayRecordAudioSource, as_source, prepare_audio, spec_rows

    ls = make_tree(tmp_path)
    rows, label = spec_rows(f"openslr:{ls}", split="dev-clean")
    assert label == "LibriSpeech dev-clean"
    index = prepare_audio(rows, tmp_path / "shards", rows_per_shard=4)
    assert index["rows"] == 6 and index["counts"] == [4, 2]
    src = ArrayRecordAudioSource(tmp_path / "shards")
    got = [src[i] for i in range(len(src))]
    assert [g["id"] for g in got] == DEV_IDS
    flac = ls / "dev-clean" / "174" / "50561" / "174-50561-0000.flac"
    assert got[0]["audio"]["bytes"] == flac.read_bytes() and got[0]["text"] == text_of(DEV_IDS[0])
    # errors come before any shard is written
    with pytest.raises(DataError, match=r"no split 'train'"):
        spec_rows(f"openslr:{ls}", split="train")
    with pytest.raises(DataError, match=r"empty directory"):
        spec_rows("openslr:", split="dev-clean")
    # a split directory streams directly too (rows listed up front, FLACs read when streamed)
    direct = as_source(ls / "dev-clean")
    assert len(direct) == 6 and direct[5]["id"] == DEV_IDS[5]
    with pytest.raises(DataError, match=r"holds the splits"):
        as_source(ls)


def test_prepare_audio_cli_openslr(tmp_path, capsys):
    pytest.importorskip("array_record")
    from proactive_jax.cli import main

    ls = make_tree(tmp_path)
    assert main(["prepare-audio", f"openslr:{ls}", str(tmp_path / "out"), "--split", "test-clean"]) == 0
    assert "2 rows of LibriSpeech test-clean" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "index.json").read_text())["rows"] == 2
    assert main(["prepare-audio", f"openslr:{ls}", str(tmp_path / "o2")]) == 2  # --split defaults to train
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no split 'train'" in err, err
