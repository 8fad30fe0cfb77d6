"""Audio input: waveform checks, Whisper log-mel features (numpy), 30 s windows, offline WAV decoding.

:func:`log_mel` equals ``WhisperFeatureExtractor`` (16 kHz, n_fft 400, hop 160, Hann window, centred STFT
with reflect padding, Slaney mel filters, log10, clamp at max - 8, ``(x + 4) / 4``, padded to 30 s) for
audio up to 30 s. Two clamp modes:

- ``utterance``: the floor is ``max - 8`` over the whole padded 30 s window (what transformers does);
- ``running``: the floor at frame f is ``max(frames <= f) - 8``, so a frame depends only on audio heard up
  to it (plus the STFT's 200-sample half window); the streaming mode.

Longer audio is never truncated: :func:`log_mel_windows` splits it into 30 s windows, each a full
Whisper input with its own positions. Every bad input (wrong rate, stereo, empty, NaN, too long) is a
one-line :class:`AudioError` naming the input and what was expected. Silence: :func:`check_waveform` refuses
an all-zero waveform (a decoded utterance that is all zeros is a broken row) unless ``allow_silent=True``;
the feature functions (:func:`log_mel`, :func:`log_mel_windows`, :func:`window_features`) accept it, as
``WhisperFeatureExtractor`` does (all-zero audio gives the constant feature ``(-10 + 4) / 4 = -1.5``), because
silent stretches and silent live chunks are ordinary input there.

Files: :func:`read_audio` decodes whatever libsndfile (``soundfile``) reads (WAV of any PCM/float width, FLAC,
OGG, ...), at any rate and channel count, mixes to mono and, by default, resamples to 16 kHz with
:func:`resample` (libsoxr through python-soxr: very-high-quality recipe with the steep filter; no scipy).
Anything it cannot decode is one :class:`AudioError` naming the file and why.
"""

from __future__ import annotations

import io
import logging
import struct
import wave
from pathlib import Path

import numpy as np
from proactive_jax.errors import DataError

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
# Resampling (libsoxr)
# ---------------------------------------------------------------------------------------------

AUDIO_EXTRA = "pip install 'proactive-jax[audio]'"
_SOXR_STEEP_FILTER = 0x40  # libsoxr's SOXR_STEEP_FILTER recipe flag (soxr.h): passband to ~0.99 of Nyquist
_warned_public_soxr = False


def resample(x, sampling_rate: int, target_rate: int = SAMPLING_RATE, *, name: str = "waveform") -> np.ndarray:
    """Band-limited sample-rate conversion of mono audio with libsoxr: ``float32 [round(n * target / rate)]``.

    The recipe is libsoxr's VHQ (28-bit precision, ~175 dB rejection, linear phase) with its steep-filter flag,
    set through python-soxr's stream class (``soxr.resample`` accepts only the five named qualities). Measured
    (tests/data/test_resample.py): a full-scale 9 kHz tone at 44.1 kHz leaves nothing above -160 dB at 16 kHz
    (alias at 7 kHz), and a 7.5 kHz tone keeps its RMS within 0.02 % of 0.707. Plain 'HQ' / 'VHQ' end their
    passband at ~0.91 of the output Nyquist and take 4.5 % / 3.5 % off that 7.5 kHz tone (the top mel bins of
    Whisper's 0-8 kHz filter bank). Should the stream class be missing (another python-soxr), plain 'VHQ' is
    used, with one warning.
    """
    global _warned_public_soxr
    x = np.ascontiguousarray(x, np.float32).reshape(-1)
    if int(sampling_rate) == int(target_rate):
        return x
    if x.size == 0:
        return x
    try:
        import soxr
    except ImportError:
        raise AudioError(f"{name}: resampling {sampling_rate} Hz -> {target_rate} Hz needs python-soxr "
                         f"({AUDIO_EXTRA})") from None
    try:
        from soxr import soxr_ext

        r = soxr_ext.CSoxr(float(sampling_rate), float(target_rate), 1, soxr_ext.SOXR_FLOAT32_I,
                           soxr.VHQ | _SOXR_STEEP_FILTER, False)
        y = r.process_float32(x[:, None], True)[:, 0]
    except (ImportError, AttributeError, TypeError) as e:
        if not _warned_public_soxr:
            logger.warning("python-soxr %s has no usable stream class (%s); resampling with plain 'VHQ' (passband "
                           "to ~0.91 of Nyquist)", getattr(soxr, "__version__", "?"), e)
            _warned_public_soxr = True
        y = soxr.resample(x, float(sampling_rate), float(target_rate), quality="VHQ")
    logger.debug("%s: resampled %d Hz -> %d Hz", name, sampling_rate, target_rate)
    return np.ascontiguousarray(y, np.float32)


_resample = resample  # for functions whose ``resample`` argument is a flag


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

    ``resample=True`` converts other rates with :func:`resample`; otherwise another rate is an error.
    ``allow_silent=False`` (default) refuses an all-zero waveform.
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
        x = _resample(x, int(sampling_rate), SAMPLING_RATE, name=name)
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
    :func:`log_mel_windows`, which never truncates). Empty, NaN, multichannel audio and another rate (unless
    ``resample=True``) are an :class:`AudioError`; all-zero audio is not (it gives -1.5 everywhere, as the
    extractor does; refuse silent utterances with :func:`check_waveform`).
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

def _decode_wav_stdlib(src, label: str) -> tuple[np.ndarray, int]:
    """PCM WAV (8/16/24/32-bit integer) through the standard library: ``([frames, channels] float32, rate)``;
    the decoder when ``soundfile`` is not installed."""
    with wave.open(src, "rb") as w:
        width, ch, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 3, 4):
        b = np.frombuffer(raw[: len(raw) // width * width], np.uint8).reshape(-1, width)
        if width == 3:  # little-endian 24-bit: sign-extend into int32
            b = np.concatenate([np.zeros((b.shape[0], 1), np.uint8), b], axis=1)
        x = b.copy().view("<i4" if width != 2 else "<i2").reshape(-1).astype(np.float32)
        x /= float(2 ** 31) if width != 2 else 32768.0
    else:
        raise AudioError(f"{label}: {8 * width}-bit PCM WAV is not supported (8, 16, 24 or 32 bit)")
    return x[: x.size // ch * ch].reshape(-1, ch), int(rate)


def _describe_start(head: bytes) -> str:
    return f"; it starts with {head[:12]!r}" if head else ""


def read_audio(path: str | Path | None = None, data: bytes | None = None, *, resample: bool = True,
               name: str | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file (or its bytes) offline: ``(mono float32 samples, sampling_rate)``.

    Everything libsndfile reads (``soundfile``, the ``audio`` extra: WAV with 8/16/24/32-bit PCM or float
    samples, FLAC as in LibriSpeech, OGG/Vorbis, ...), at any rate and channel count; channels are averaged
    to mono. ``resample=True`` (default) converts the result to 16 kHz with :func:`resample` and returns
    ``sampling_rate == 16000``; ``resample=False`` returns the file's own rate. Without ``soundfile`` only
    integer PCM WAV is decoded (standard library).

    Undecodable input (a text file named .wav, an empty file, a header cut short, a format libsndfile does not
    know, a file without samples) is one :class:`AudioError` naming the file (``name``, else the path, else
    ``<audio bytes>``) and why; a missing file is a ``FileNotFoundError``.
    """
    label = name or (str(path) if path is not None else "<audio bytes>")
    if data is None:
        if path is None:
            raise TypeError("read_audio: give a path or data")
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{label}: audio file does not exist")
        if not p.is_file():
            raise AudioError(f"{label}: not a file")
        try:
            with open(p, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise AudioError(f"{label}: cannot read ({e.strerror or e})") from None
    else:
        data = bytes(data)
        head = data[:16]
    if not head:
        raise AudioError(f"{label}: empty file (0 bytes), not audio")
    src = lambda: io.BytesIO(data) if data is not None else str(path)  # noqa: E731
    try:
        import soundfile as sf
    except ImportError:
        sf = None
    try:
        if sf is not None:
            x, rate = sf.read(src(), dtype="float32", always_2d=True)
        elif head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            x, rate = _decode_wav_stdlib(src(), label)
        else:
            raise AudioError(f"{label}: decoding this format needs soundfile ({AUDIO_EXTRA}); only integer PCM "
                             f"WAV is decoded without it{_describe_start(head)}")
    except AudioError:
        raise
    except (RuntimeError, EOFError, wave.Error, struct.error, ValueError, TypeError, OSError) as e:
        why = getattr(e, "error_string", None) or str(e) or type(e).__name__
        hint = _describe_start(head) if "not recognised" in why.lower() else ""
        raise AudioError(f"{label}: cannot decode audio ({why.rstrip('.')}){hint}") from None
    if x.shape[0] == 0:
        raise AudioError(f"{label}: no audio samples (0 frames at {rate} Hz)")
    x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else np.ascontiguousarray(x[:, 0])
    rate = int(rate)
    if resample and rate != SAMPLING_RATE:
        x, rate = _resample(x, rate, SAMPLING_RATE, name=label), SAMPLING_RATE
    return x.astype(np.float32, copy=False), rate


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
