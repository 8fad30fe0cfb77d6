"""Audio input: waveform checks, Whisper log-mel features (numpy), 30 s windows, offline WAV decoding.

:func:`log_mel` equals ``WhisperFeatureExtractor`` (16 kHz, n_fft 400, hop 160, Hann window, centred STFT
with reflect padding, Slaney mel filters, log10, clamp at max - 8, ``(x + 4) / 4``, padded to 30 s) for
audio up to 30 s. Two clamp modes:

- ``utterance``: the floor is ``max - 8`` over the whole padded 30 s window (what transformers does);
- ``running``: the floor at frame f is ``max(frames <= f) - 8``, so a frame depends only on audio heard up
  to it (plus the STFT's 200-sample half window); the streaming mode.

Longer audio is never truncated: :func:`log_mel_windows` splits it into 30 s windows, each a full
Whisper input with its own positions. Every bad input (wrong rate, stereo, empty, silent, too long) is a
one-line :class:`AudioError` naming the input and what was expected.
"""

from __future__ import annotations

import logging
import math
import wave
from pathlib import Path

import numpy as np
from ..errors import DataError

logger = logging.getLogger(__name__)

SAMPLING_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SECONDS = 30
N_SAMPLES = SAMPLING_RATE * WINDOW_SECONDS  # 480000
N_FRAMES = N_SAMPLES // HOP  # 3000
CLAMP_MODES = ("utterance", "running")


class AudioError(DataError):
    """Bad audio input; the message names the input and what was expected."""


# ---------------------------------------------------------------------------------------------
# Slaney mel filter bank (as librosa / transformers' mel_filter_bank(norm="slaney", mel_scale="slaney"))
# ---------------------------------------------------------------------------------------------

def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    lin = 3.0 * f / 200.0
    logstep = 27.0 / np.log(6.4)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * logstep, lin)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(m >= 15.0, 1000.0 * np.exp(logstep * (m - 15.0)), 200.0 * m / 3.0)


_FILTERS: dict = {}


def mel_filters(num_mel_bins: int, sampling_rate: int = SAMPLING_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """``[n_fft // 2 + 1, num_mel_bins]`` float64 triangular Slaney-normalised filters over 0..8 kHz."""
    key = (num_mel_bins, sampling_rate, n_fft)
    if key not in _FILTERS:
        fft_freqs = np.linspace(0, sampling_rate // 2, n_fft // 2 + 1)
        edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), num_mel_bins + 2))
        width = np.diff(edges)
        slope = edges[None, :] - fft_freqs[:, None]
        down = -slope[:, :-2] / width[:-1]
        up = slope[:, 2:] / width[1:]
        fb = np.maximum(0.0, np.minimum(down, up))
        fb *= 2.0 / (edges[2:] - edges[:-2])
        _FILTERS[key] = fb
    return _FILTERS[key]


# ---------------------------------------------------------------------------------------------
# Waveform checks
# ---------------------------------------------------------------------------------------------

def check_waveform(waveform, sampling_rate: int, *, name: str = "waveform", resample: bool = False,
                   max_seconds: float | None = None, allow_silent: bool = False) -> np.ndarray:
    """A mono float32 16 kHz waveform, or a one-line :class:`AudioError` naming ``name``.

    ``resample=True`` converts other rates (polyphase, scipy); otherwise another rate is an error.
    """
    x = np.asarray(waveform)
    if x.dtype.kind not in "fiu":
        raise AudioError(f"{name}: expected numeric audio samples, got dtype {x.dtype}")
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioError(f"{name}: expected mono audio [samples], got shape {list(x.shape)} (stereo or batched; "
                         f"mix down to one channel, e.g. waveform.mean(axis=channel_axis))")
    if x.dtype.kind in "iu":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    x = x.astype(np.float32, copy=False)
    if x.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{name}: holds NaN or infinite samples (first at index {int(np.argmin(np.isfinite(x)))})")
    if int(sampling_rate) != SAMPLING_RATE:
        if not resample:
            raise AudioError(f"{name}: sampling rate {sampling_rate} Hz, expected {SAMPLING_RATE} Hz (resample the "
                             f"audio, or pass resample=True)")
        from scipy.signal import resample_poly

        g = math.gcd(int(sampling_rate), SAMPLING_RATE)
        x = resample_poly(x, SAMPLING_RATE // g, int(sampling_rate) // g).astype(np.float32)
        logger.info("%s: resampled %d Hz -> %d Hz", name, sampling_rate, SAMPLING_RATE)
    if not allow_silent and float(np.max(np.abs(x))) == 0.0:
        raise AudioError(f"{name}: silent audio (all {x.size} samples are zero)")
    if max_seconds is not None and x.size > max_seconds * SAMPLING_RATE:
        raise AudioError(f"{name}: {x.size / SAMPLING_RATE:.2f} s of audio, longer than the configured maximum "
                         f"of {max_seconds} s")
    return x


# ---------------------------------------------------------------------------------------------
# Log-mel
# ---------------------------------------------------------------------------------------------

def _power_spectrogram(x: np.ndarray) -> np.ndarray:
    """``|STFT|^2`` [frames, n_fft//2+1] (centred, reflect padded, periodic Hann), last frame dropped."""
    pad = N_FFT // 2
    if x.size <= pad:  # reflect padding needs more than n_fft/2 samples
        x = np.pad(x, (0, pad + 1 - x.size))
    xp = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    n = 1 + (xp.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    spec = np.fft.rfft(xp[idx] * window, axis=-1)
    return (np.abs(spec) ** 2)[:-1]


def _log_mel_frames(x: np.ndarray, num_mel_bins: int, clamp: str) -> np.ndarray:
    return clamp_and_scale(np.log10(np.maximum(_power_spectrogram(x) @ mel_filters(num_mel_bins), 1e-10)), clamp)


def clamp_and_scale(logm: np.ndarray, clamp: str) -> np.ndarray:
    """Whisper's dynamic-range clamp (max - 8: over the utterance, or running over the frames heard so far)
    and its ``(x + 4) / 4`` scaling of log10 mel power ``[frames, bins]`` -> ``[bins, frames]`` float32."""
    if clamp == "utterance":
        floor = logm.max() - 8.0
    elif clamp == "running":
        floor = (np.maximum.accumulate(logm.max(axis=1)) - 8.0)[:, None]
    else:
        raise AudioError(f"clamp={clamp!r}: expected one of {CLAMP_MODES}")
    return ((np.maximum(logm, floor) + 4.0) / 4.0).T.astype(np.float32)


_SPARSE: dict = {}


def mel_project(power: np.ndarray, num_mel_bins: int) -> np.ndarray:
    """``power @ mel_filters(num_mel_bins)`` over the filters' nonzeros only (~2 per FFT bin): no BLAS call,
    so a loader worker stays on one core (a multi-threaded BLAS matmul of this size was 30x slower on the
    loaded 2-core machine) and does ~100x fewer multiply-adds."""
    if num_mel_bins not in _SPARSE:
        fb_t = mel_filters(num_mel_bins).T  # [bins, fft bins]
        m, j = np.nonzero(fb_t)  # row-major: sorted by mel bin
        present, starts = np.unique(m, return_index=True)
        _SPARSE[num_mel_bins] = (j, fb_t[m, j], present, starts)
    j, w, present, starts = _SPARSE[num_mel_bins]
    out = np.zeros((power.shape[0], num_mel_bins))
    if power.shape[0]:
        out[:, present] = np.add.reduceat(power[:, j] * w, starts, axis=1)
    return out


def window_features(x: np.ndarray, num_mel_bins: int, window_frames: int, clamp: str) -> np.ndarray:
    """``log_mel_windows(x, ...)[0][0]`` for audio of at most one window (the loaders' fast path), computing
    the STFT only over frames whose 400-sample window touches ``x``. Every later frame sees only zero
    padding, so its power is exactly 0 and its log-mel exactly -10 before the clamp; filling them so gives
    the reference's values."""
    win = window_frames * HOP
    if x.size > win:
        raise AudioError(f"{x.size} samples, longer than one window of {win}")
    span = min(win, -(-(x.size + N_FFT) // HOP) * HOP + N_FFT)  # covers every frame that sees x, + margin
    k = win // HOP if span == win else (span - N_FFT // 2) // HOP + 1
    logm = np.full((window_frames, num_mel_bins), -10.0)
    mel = mel_project(_power_spectrogram(np.pad(x, (0, span - x.size)))[:k], num_mel_bins)
    logm[:k] = np.log10(np.maximum(mel, 1e-10))
    return clamp_and_scale(logm, clamp)


def num_frames(num_samples: int) -> int:
    """Valid mel frames of ``num_samples`` samples: ``ceil(n / 160)``, as the Whisper extractor's attention mask."""
    return min(N_FRAMES, -(-num_samples // HOP))


def log_mel(waveform, sampling_rate: int = SAMPLING_RATE, num_mel_bins: int = 128, *, clamp: str = "utterance",
            resample: bool = False, name: str = "waveform") -> np.ndarray:
    """Whisper log-mel features ``[num_mel_bins, 3000]`` float32 of up to 30 s of mono audio.

    Equal (to 1e-4) to ``WhisperFeatureExtractor(feature_size=num_mel_bins)(waveform, sampling_rate=16000,
    return_tensors="np").input_features[0]`` with ``clamp="utterance"``. Longer audio is an error (use
    :func:`log_mel_windows`, which never truncates).
    """
    x = check_waveform(waveform, sampling_rate, name=name, resample=resample, allow_silent=True)
    if x.size > N_SAMPLES:
        raise AudioError(f"{name}: {x.size / SAMPLING_RATE:.2f} s of audio is longer than one {WINDOW_SECONDS} s "
                         f"window; use log_mel_windows (splits into windows, never truncates)")
    return _log_mel_frames(np.pad(x, (0, N_SAMPLES - x.size)), num_mel_bins, clamp)


def log_mel_windows(waveform, sampling_rate: int = SAMPLING_RATE, num_mel_bins: int = 128, *,
                    clamp: str = "utterance", resample: bool = False, max_seconds: float | None = None,
                    window_frames: int = N_FRAMES, name: str = "waveform") -> tuple[np.ndarray, np.ndarray]:
    """Audio of any length as windows: ``(features [W, bins, window_frames], feature_attention_mask [W, frames])``.

    Window w holds samples ``[w * window, (w + 1) * window)`` (30 s by default; a small encoder's
    ``2 * max_source_positions`` frames otherwise), is padded like one Whisper input and encoded with
    its own positions; the mask marks its valid frames. Nothing is dropped.
    """
    x = check_waveform(waveform, sampling_rate, name=name, resample=resample, max_seconds=max_seconds,
                       allow_silent=True)
    win = window_frames * HOP
    n_win = max(1, -(-x.size // win))
    feats = np.empty((n_win, num_mel_bins, window_frames), np.float32)
    mask = np.zeros((n_win, window_frames), np.int32)
    for w in range(n_win):
        seg = x[w * win:(w + 1) * win]
        feats[w] = _log_mel_frames(np.pad(seg, (0, win - seg.size)), num_mel_bins, clamp)
        mask[w, :max(1, min(window_frames, -(-seg.size // HOP)))] = 1
    return feats, mask


def feature_mask(num_samples: int) -> np.ndarray:
    """``feature_attention_mask`` [3000] int32 for ``num_samples`` samples in one window."""
    m = np.zeros(N_FRAMES, np.int32)
    m[:max(1, num_frames(num_samples))] = 1
    return m


# ---------------------------------------------------------------------------------------------
# Offline decoding
# ---------------------------------------------------------------------------------------------

def read_audio(path: str | Path | None = None, data: bytes | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file (or its bytes) offline: ``(mono float32 samples, sampling_rate)``.

    PCM WAV goes through the standard library; other formats (FLAC, the LibriSpeech format) need
    ``soundfile`` (the ``audio`` extra). Multichannel files are averaged to mono.
    """
    import io

    label = str(path) if path is not None else "<audio bytes>"
    src = io.BytesIO(data) if data is not None else Path(path)
    if data is None and not Path(path).is_file():
        raise FileNotFoundError(f"{label}: audio file does not exist")
    head = data[:4] if data is not None else Path(path).read_bytes()[:4]
    if head == b"RIFF":
        try:
            with wave.open(src if data is not None else str(path), "rb") as w:
                width, ch, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
                raw = w.readframes(w.getnframes())
            if width in (2, 4):
                x = np.frombuffer(raw, "<i2" if width == 2 else "<i4").astype(np.float32)
                x /= float(2 ** (8 * width - 1))
            elif width == 1:
                x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
            else:
                raise AudioError(f"{label}: {8 * width}-bit PCM WAV is not supported (16, 32 or 8 bit)")
            return x.reshape(-1, ch).mean(axis=1).astype(np.float32), rate
        except wave.Error:
            pass  # e.g. float WAV: fall through to soundfile
    try:
        import soundfile as sf
    except ImportError:
        raise AudioError(f"{label}: decoding this format needs soundfile (pip install 'proactive-jax[audio]'); "
                         f"only PCM WAV is decoded without it") from None
    x, rate = sf.read(src, dtype="float32", always_2d=True)
    return x.mean(axis=1).astype(np.float32), int(rate)


def write_wav(path: str | Path, waveform: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> Path:
    """Write mono float audio in [-1, 1] as 16-bit PCM WAV (standard library only)."""
    x = np.clip(np.asarray(waveform, np.float32), -1.0, 1.0)
    pcm = np.round(x * 32767.0).astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sampling_rate))
        w.writeframes(pcm.tobytes())
    return path
