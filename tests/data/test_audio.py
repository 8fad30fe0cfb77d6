"""Log-mel features against WhisperFeatureExtractor; clamp modes; windows; bad audio; offline WAV decoding."""
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
