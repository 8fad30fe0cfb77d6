"""Log-mel features against WhisperFeatureExtractor; clamp modes; windows; bad audio; offline decoding (undecodable
files, 24-bit WAV, the stdlib fallback); silence."""
import numpy as np
import pytest

from proactive_jax.audio import AudioError, feature_mask, log_mel, log_mel_windows, read_audio, write_wav
from proactive_jax.data import audio as A


@pytest.mark.parametrize("bins", [80, 128])
def test_log_mel_equals_whisper_feature_extractor(bins):
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=bins)
    rng = np.random.default_rng(bins)
    for n in (160, 401, 16000, 37123, 480000):
        x = (rng.standard_normal(n) * rng.uniform(0.01, 0.5)).astype(np.float32)
        out = fe(x, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
        ours = log_mel(x, sampling_rate=16000, num_mel_bins=bins)
        assert ours.shape == (bins, 3000) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, out.input_features[0], atol=1e-4, rtol=0, err_msg=f"{n} samples")
        np.testing.assert_array_equal(feature_mask(n), out.attention_mask[0])


def test_running_clamp_uses_only_audio_heard():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(48000) * 1e-4).astype(np.float32)
    base = log_mel(x, num_mel_bins=80, clamp="running")
    loud = x.copy()
    loud[32000:] *= 1e4  # the last second is 80 dB louder: raises the utterance max, so the floor
    changed = log_mel(loud, num_mel_bins=80, clamp="running")
    f0 = (32000 - 200) // 160  # frames whose STFT window ends before sample 32000
    np.testing.assert_array_equal(changed[:, :f0], base[:, :f0])
    utt_a, utt_b = log_mel(x, num_mel_bins=80), log_mel(loud, num_mel_bins=80)
    assert np.abs(utt_b[:, :f0] - utt_a[:, :f0]).max() > 0.1  # the HF clamp does look ahead
    # after the loud part started, the running floor is the utterance floor
    np.testing.assert_allclose(changed[:, 220:300], utt_b[:, 220:300], atol=1e-6)


def test_long_audio_is_split_into_windows_never_truncated():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(16000 * 65) * 0.1).astype(np.float32)  # 65 s -> 3 windows
    with pytest.raises(AudioError, match="longer than one 30 s window; use log_mel_windows"):
        log_mel(x)
    feats, mask = log_mel_windows(x, num_mel_bins=80)
    assert feats.shape == (3, 80, 3000) and mask.sum(1).tolist() == [3000, 3000, 500]
    np.testing.assert_allclose(feats[1], log_mel(x[480000:960000], num_mel_bins=80), atol=0)
    np.testing.assert_allclose(feats[2], log_mel(x[960000:], num_mel_bins=80), atol=0)
    with pytest.raises(AudioError, match="65.00 s of audio, longer than the configured maximum of 60"):
        log_mel_windows(x, max_seconds=60)


def test_bad_audio_errors_name_the_problem():
    tone = np.sin(np.arange(8000) / 5.0).astype(np.float32)
    with pytest.raises(AudioError, match="clip.wav: sampling rate 44100 Hz, expected 16000 Hz"):
        log_mel(tone, sampling_rate=44100, name="clip.wav")
    with pytest.raises(AudioError, match=r"expected mono audio \[samples\], got shape \[2, 8000\]"):
        log_mel(np.stack([tone, tone]))
    with pytest.raises(AudioError, match="empty audio"):
        log_mel(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="silent audio"):
        A.check_waveform(np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        log_mel(np.array([0.1, np.nan], np.float32))
    with pytest.raises(AudioError, match="clamp='global'"):
        log_mel(tone, clamp="global")
    # resampling when asked: a 1 kHz tone stays a 1 kHz tone
    t48 = np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000).astype(np.float32)
    y = A.check_waveform(t48, 48000, resample=True)
    assert y.size == 16000
    assert np.argmax(np.abs(np.fft.rfft(y))) == 1000


def test_wav_round_trip_and_fixtures(tmp_path):
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16000)).astype(np.float32)
    p = write_wav(tmp_path / "a.wav", x)
    y, sr = read_audio(p)
    assert sr == 16000 and np.abs(y - x).max() < 1e-4
    y2, _ = read_audio(data=p.read_bytes())
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "x.flac").write_bytes(b"fLaC0000")
    try:
        import soundfile  # noqa: F401
    except ImportError:
        with pytest.raises(AudioError, match="needs soundfile"):
            read_audio(tmp_path / "x.flac")
    else:
        with pytest.raises(AudioError, match=r"x.flac: cannot decode audio"):
            read_audio(tmp_path / "x.flac")


# ---------------------------------------------------------------------------------------------
# undecodable files, 24-bit WAV, the stdlib fallback, silence
# ---------------------------------------------------------------------------------------------

def _wav_bytes(pcm: bytes, rate: int, channels: int, bits: int) -> bytes:
    """A plain (WAVE_FORMAT_PCM, 16-byte fmt chunk) RIFF/WAVE file, written by hand."""
    import struct

    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm24(x: np.ndarray) -> bytes:
    q = np.round(np.clip(x, -1, 1 - 2 ** -23) * 2 ** 23).astype("<i4")
    return q.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def _undecodable(tmp_path) -> dict:
    good = _wav_bytes(np.full(800, 1000, "<i2").tobytes(), 16000, 1, 16)
    files = {
        "text.wav": b"this is a text file, not audio\n" * 3,
        "empty.wav": b"",
        "cut_header.wav": good[:30],  # inside the fmt chunk
        "header_only.wav": good[:44],  # a whole header, no samples
        "movie.m4a": b"\x00\x00\x00\x18ftypM4A \x00\x00\x02\x00M4A isomiso2" + bytes(64),
    }
    for k, b in files.items():
        (tmp_path / k).write_bytes(b)
    return files


def test_undecodable_files_are_one_audio_error(tmp_path):
    pytest.importorskip("soundfile")
    _undecodable(tmp_path)
    cases = {
        "text.wav": r"text.wav: cannot decode audio \(.*Format not recognised\); it starts with b'this is a te'",
        "empty.wav": r"empty.wav: empty file \(0 bytes\), not audio",
        "cut_header.wav": r"cut_header.wav: cannot decode audio \(.*No 'data' chunk marker\)",
        "header_only.wav": r"header_only.wav: no audio samples \(0 frames at 16000 Hz\)",
        "movie.m4a": r"movie.m4a: cannot decode audio \(.*Format not recognised\)",
    }
    for fname, pattern in cases.items():
        with pytest.raises(AudioError, match=pattern):
            read_audio(tmp_path / fname)
        with pytest.raises(AudioError, match=pattern.replace(fname, "row 7")):
            read_audio(data=(tmp_path / fname).read_bytes(), name="row 7")
    with pytest.raises(AudioError, match="not a file"):
        read_audio(tmp_path)
    # AudioError is a DataError (one line from the CLI) and a ValueError
    from proactive_jax.errors import DataError

    assert issubclass(AudioError, DataError) and issubclass(AudioError, ValueError)


def test_24_bit_wav_decodes(tmp_path):
    pytest.importorskip("soundfile")
    x = (0.6 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    p = tmp_path / "pcm24.wav"
    p.write_bytes(_wav_bytes(_pcm24(x), 16000, 1, 24))
    y, sr = read_audio(p)
    assert sr == 16000 and np.abs(y - x).max() < 2 ** -22
    stereo = np.stack([x, -0.5 * x], axis=1).reshape(-1)
    p2 = tmp_path / "pcm24_stereo.wav"
    p2.write_bytes(_wav_bytes(_pcm24(stereo), 16000, 2, 24))
    y2, _ = read_audio(p2)
    assert np.abs(y2 - 0.25 * x).max() < 2 ** -22


def test_stdlib_fallback_without_soundfile(tmp_path, monkeypatch):
    """Without soundfile: integer PCM WAV (8/16/24/32-bit) decodes like soundfile does; others are one error."""
    import sys

    x = (0.6 * np.sin(2 * np.pi * 440 * np.arange(1600) / 16000)).astype(np.float32)
    pcm = {
        8: np.round(x * 127 + 128).astype(np.uint8).tobytes(),
        16: np.round(x * 32767).astype("<i2").tobytes(),
        24: _pcm24(x),
        32: np.round(x.astype(np.float64) * (2 ** 31 - 1)).astype("<i4").tobytes(),
    }
    want = {}
    try:
        import soundfile  # noqa: F401

        for bits, b in pcm.items():
            (tmp_path / f"p{bits}.wav").write_bytes(_wav_bytes(b, 16000, 1, bits))
            want[bits] = read_audio(tmp_path / f"p{bits}.wav")[0]
    except ImportError:
        pass
    _undecodable(tmp_path)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile -> ImportError
    for bits, b in pcm.items():
        p = tmp_path / f"p{bits}.wav"
        p.write_bytes(_wav_bytes(b, 16000, 1, bits))
        y, sr = read_audio(p)
        assert sr == 16000 and np.abs(y - x).max() < 1.0 / 50, bits
        if bits in want:
            np.testing.assert_array_equal(y, want[bits], err_msg=f"{bits}-bit")
    with pytest.raises(AudioError, match=r"text.wav: decoding this format needs soundfile"):
        read_audio(tmp_path / "text.wav")
    with pytest.raises(AudioError, match=r"cut_header.wav: cannot decode audio"):
        read_audio(tmp_path / "cut_header.wav")
    with pytest.raises(AudioError, match=r"header_only.wav: no audio samples"):
        read_audio(tmp_path / "header_only.wav")


def test_silence_is_refused_by_check_waveform_but_has_features():
    """Silence: an all-zero *utterance* is an AudioError where rows are checked (check_waveform's default);
    the feature functions take it (silent live chunks and silent windows are ordinary) and give -1.5, as
    WhisperFeatureExtractor does."""
    zeros = np.zeros(16000, np.float32)
    with pytest.raises(AudioError, match=r"clip: silent audio \(all 16000 samples are zero\)"):
        A.check_waveform(zeros, 16000, name="clip")
    assert A.check_waveform(zeros, 16000, allow_silent=True).size == 16000
    feats = log_mel(zeros, num_mel_bins=80)
    np.testing.assert_array_equal(feats, np.full((80, 3000), -1.5, np.float32))
    np.testing.assert_array_equal(log_mel(zeros, num_mel_bins=80, clamp="running"), feats)
    w, m = log_mel_windows(zeros, num_mel_bins=80)
    np.testing.assert_array_equal(w[0], feats)
    transformers = pytest.importorskip("transformers")
    ref = transformers.WhisperFeatureExtractor(feature_size=80)(zeros, sampling_rate=16000,
                                                               return_tensors="np").input_features[0]
    np.testing.assert_allclose(feats, ref, atol=1e-6, rtol=0)
