"""Resampling (libsoxr) and read_audio at any rate and channel count: tone tests, stereo mix-down, and log-mel
features equal to WhisperFeatureExtractor on the same resampled audio. Files are written here with soundfile."""
import numpy as np
import pytest

from proactive_jax.data import audio as A

soxr = pytest.importorskip("soxr")
sf = pytest.importorskip("soundfile")

RATES = (8000, 22050, 44100, 48000)


def tone(freq, rate, seconds=2.0, amp=1.0, phase=0.0):
    t = np.arange(int(round(rate * seconds))) / rate
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def spectrum_db(y, rate):
    """Amplitude spectrum in dB re a full-scale sine (Blackman-Harris window: sidelobes below -92 dB)."""
    n = y.size
    k = np.arange(n)
    w = (0.35875 - 0.48829 * np.cos(2 * np.pi * k / n) + 0.14128 * np.cos(4 * np.pi * k / n)
         - 0.01168 * np.cos(6 * np.pi * k / n))
    amp = np.abs(np.fft.rfft(y.astype(np.float64) * w)) / (w.sum() / 2)
    return np.fft.rfftfreq(n, 1 / rate), 20 * np.log10(np.maximum(amp, 1e-12))


def rms(y):
    return float(np.sqrt(np.mean(np.square(y.astype(np.float64)))))


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_no_alias_above_minus_80_db(rate):
    """A full-scale 9 kHz tone is above the 8 kHz output Nyquist: it must vanish, not fold to 7 kHz."""
    y = A.resample(tone(9000, rate), rate, 16000)
    assert y.dtype == np.float32 and y.size == 32000
    f, db = spectrum_db(y[800:-800], 16000)  # the filter's start/end transients trimmed
    worst = float(db.max())
    print(f"RESAMPLE 9 kHz tone {rate} Hz -> 16 kHz: strongest component {worst:.1f} dB at {f[db.argmax()]:.0f} Hz")
    assert worst < -80.0


@pytest.mark.parametrize("rate", [22050, 44100, 48000])
def test_passband_keeps_a_7_5_khz_tone(rate):
    y = A.resample(tone(7500, rate), rate, 16000)
    r = rms(y[800:-800])
    print(f"RESAMPLE 7.5 kHz tone {rate} Hz -> 16 kHz: RMS {r:.5f} ({r / np.sqrt(0.5) - 1:+.3%})")
    assert abs(r / np.sqrt(0.5) - 1) < 0.01
    f, db = spectrum_db(y[800:-800], 16000)
    assert abs(f[db.argmax()] - 7500) <= 1


def test_plain_hq_would_fail_the_passband_test():
    """Why the steep filter: soxr.resample's own 'HQ' / 'VHQ' roll off before 7.5 kHz (documented choice)."""
    for q in ("HQ", "VHQ"):
        y = soxr.resample(tone(7500, 44100), 44100, 16000, quality=q)
        assert rms(y[800:-800]) / np.sqrt(0.5) < 0.98, q


def test_upsampling_8_khz():
    x = tone(3500, 8000)
    y = A.resample(x, 8000, 16000)
    assert y.size == 32000
    assert abs(rms(y[800:-800]) / np.sqrt(0.5) - 1) < 0.01
    f, db = spectrum_db(y[800:-800], 16000)
    assert abs(f[db.argmax()] - 3500) <= 1
    assert db[f > 4100].max() < -80.0  # no image of the 3.5 kHz tone at 4.5 kHz


def test_same_rate_is_untouched():
    x = tone(1000, 16000, 0.1)
    np.testing.assert_array_equal(A.resample(x, 16000, 16000), x)
    assert A.resample(np.zeros(0, np.float32), 44100).size == 0


@pytest.mark.parametrize("rate", RATES)
def test_read_audio_any_rate(rate, tmp_path):
    """read_audio returns 16 kHz mono by default, the file's rate with resample=False."""
    freq = 1000.0
    x = tone(freq, rate, 1.5, amp=0.5)
    p = tmp_path / f"t{rate}.wav"
    sf.write(p, x, rate, subtype="FLOAT")
    y, sr = A.read_audio(p)
    assert sr == 16000 and y.dtype == np.float32 and y.ndim == 1 and y.size == 24000
    np.testing.assert_array_equal(y, A.resample(x, rate, 16000))
    f, db = spectrum_db(y, 16000)
    assert abs(f[db.argmax()] - freq) <= 1 and abs(db.max() - 20 * np.log10(0.5)) < 0.1
    raw, raw_sr = A.read_audio(p, resample=False)
    assert raw_sr == rate
    np.testing.assert_array_equal(raw, x)


def test_read_audio_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(1000, 44100, 1.0, amp=0.4), tone(2500, 44100, 1.0, amp=0.4)
    p = tmp_path / "stereo.flac"
    sf.write(p, np.stack([left, right], axis=1), 44100, subtype="PCM_24")
    raw, sr = A.read_audio(p, resample=False)
    assert sr == 44100 and raw.shape == (44100,)
    np.testing.assert_allclose(raw, (left + right) / 2, atol=1e-6)
    y, sr = A.read_audio(p)
    assert sr == 16000 and y.shape == (16000,)
    f, db = spectrum_db(y, 16000)
    for freq in (1000, 2500):  # each channel at half its amplitude
        assert abs(db[np.argmin(np.abs(f - freq))] - 20 * np.log10(0.2)) < 0.1
    # the same through bytes
    y2, _ = A.read_audio(data=p.read_bytes())
    np.testing.assert_array_equal(y, y2)


@pytest.mark.parametrize("rate", RATES)
def test_features_equal_whisper_after_the_same_resampling(rate, tmp_path):
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(rate)
    n = int(rate * 2.3)
    noise = rng.standard_normal((n, 2)).astype(np.float32) * 0.05
    stereo = noise + np.stack([tone(440, rate, n / rate, 0.3), tone(3000, rate, n / rate, 0.2)], axis=1)
    p = tmp_path / f"s{rate}.wav"
    sf.write(p, stereo, rate, subtype="FLOAT")
    wav, sr = A.read_audio(p)
    ours = A.log_mel(wav, sr, num_mel_bins=128)
    same = A.resample(stereo.mean(axis=1), rate, 16000)  # the same mix-down and resampling, by hand
    fe = transformers.WhisperFeatureExtractor(feature_size=128)
    ref = fe(same, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # and check_waveform(resample=True) on the array at its own rate is the same conversion
    np.testing.assert_array_equal(A.check_waveform(stereo.mean(axis=1), rate, resample=True), same)
