"""Live audio for sessions: raw 16 kHz waveform pieces -> whole chunks -> incremental causal encoding.

A live audio session (a :class:`.session.SessionBatch` on a Qwen2-Audio config) takes, per push, either

- a **waveform piece**: mono samples at 16 kHz of *any* length (float in [-1, 1]; int16 PCM through
  ``push_audio``, scaled by 1/32768 as WAV files are read). Pieces are buffered; a chunk of K encoder
  tokens (``config.chunk``, 40 ms each) becomes a unit as soon as every sample its features need has been
  heard: the chunk's 640 K samples plus the STFT's 40-sample look-ahead (2.5 ms; none at the end of an
  encoder window, where Whisper's framing reflects inside the window). A piece may complete zero, one or
  several chunks; each is read as its own unit, in order. ``finish()`` encodes the rest (the last,
  possibly shorter, chunk) as the offline extractor does: zeros after the audio.
- or **chunk embeddings** ``[k, hidden]`` (projected encoder outputs, e.g. an ``AudioStreamExample``'s
  ``unit_embeds`` sliced per unit): one unit each, ``k = K`` except a shorter last chunk (after which only
  ``finish()`` may follow).

The features are the running-clamp log-mel of :mod:`proactive_jax.data.audio` computed frame range by
frame range (:func:`chunk_log_mel`): frame f uses only the samples it covers, and its clamp floor the
maximum over frames <= f of its window. Each chunk is encoded once by the chunk encoder of
:mod:`proactive_jax.models.audio` (causal mask, ``conv_edge="zero"``; the state carried between chunks is
its K/V cache, the last mel frame and conv1 output, and the position), vmapped over the batch rows so every
row has its own position and window; a row's state is reset at each new 30 s window, as the offline
encoder encodes each window with its own positions. So chunk i's embeddings equal
:func:`.audio_stream.audio_embeddings` of the whole utterance (to float rounding), and nothing heard is
ever encoded twice.
"""

from __future__ import annotations

import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.data.audio import HOP, N_FFT, SAMPLING_RATE, AudioError, check_waveform, mel_filters
from proactive_jax.models.audio import EncoderState, chunk_step, output_lengths
from proactive_jax.errors import SessionError

log = logging.getLogger(__name__)

LOOKAHEAD = N_FFT // 2 - HOP  # 40 samples: the last frame of a chunk reaches this far past the chunk's end
_WINDOW = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)


def chunk_log_mel(samples: np.ndarray, win: int, f0: int, f1: int, bins: int, run_max: float):
    """Running-clamp log-mel frames ``f0 .. f1-1`` of one window: ``([f1-f0, bins] float32, new run_max)``.

    ``samples``: the window's samples known so far (later ones count as zeros, the offline padding);
    ``win``: the window length in samples; ``run_max``: the largest frame maximum of frames < f0 (-inf at
    the window's start). Equal to ``log_mel_windows(..., clamp="running")`` on those frames."""
    j = np.arange(N_FFT)[None, :] + HOP * np.arange(f0, f1)[:, None] - N_FFT // 2
    j = np.abs(j)  # reflect padding at the window's start
    j = np.where(j >= win, 2 * (win - 1) - j, j)  # ... and at its end
    x = np.zeros(j.shape, np.float64)
    ok = j < samples.size
    x[ok] = samples[j[ok]]
    power = np.abs(np.fft.rfft(x * _WINDOW, axis=-1)) ** 2
    logm = np.log10(np.maximum(power @ mel_filters(bins), 1e-10))
    peak = np.maximum.accumulate(np.concatenate([[run_max], logm.max(axis=1)]))
    out = (np.maximum(logm, peak[1:, None] - 8.0) + 4.0) / 4.0
    return out.astype(np.float32), float(peak[-1])


class LiveAudio:
    """One row's audio source: the buffer of the current encoder window and the chunks made from it.

    ``add(samples)`` returns the chunks completed by the new samples and ``flush()`` the rest at the end,
    each as ``(mel [4K, bins] float32, valid tokens, starts_window)``. ``ready_after(total)`` and
    ``final_tokens(total)`` say, without changing anything, how many chunks / unit tokens ``total``
    samples give (checks before a push)."""

    def __init__(self, K: int, window_frames: int, bins: int):
        self.K, self.bins, self.frames = K, bins, 4 * K
        self.win = window_frames * HOP
        self.chunk_samples = self.frames * HOP
        self.per_window = self.win // self.chunk_samples
        self.buf = np.zeros(self.win, np.float32)
        self.heard = 0  # samples of the current window
        self.total = 0  # samples of the utterance
        self.c = 0  # chunks made in the current window
        self.run_max = -np.inf

    def ready_after(self, total: int) -> int:
        """Chunks completed (before the end) once ``total`` samples were heard."""
        h = total % self.win
        return total // self.win * self.per_window + max(0, h - LOOKAHEAD) // self.chunk_samples

    def final_tokens(self, total: int) -> int:
        """Unit tokens of the whole utterance if it ends after ``total`` samples."""
        h = total % self.win
        last = int(output_lengths(-(-h // HOP))[1]) if h else 0
        return total // self.win * self.per_window * self.K + last

    def add(self, samples: np.ndarray) -> list:
        out = []
        while samples.size:
            take = min(samples.size, self.win - self.heard)
            self.buf[self.heard:self.heard + take] = samples[:take]
            self.heard += take
            self.total += take
            samples = samples[take:]
            while self.c < self.per_window and self.heard >= self._needs(self.c):
                out.append(self._chunk(self.K))
            if self.heard == self.win:  # the window is complete: the next samples start a new one
                self._next_window()
        return out

    def _needs(self, c: int) -> int:
        """Samples of the window that chunk c's features need: its own and the look-ahead (none at the end)."""
        return min(self.win, (c + 1) * self.chunk_samples + LOOKAHEAD)

    def flush(self) -> list:
        """The last chunk(s) at the end of the utterance (the rest of the window counts as zeros)."""
        out = []
        n = int(output_lengths(-(-self.heard // HOP))[1]) if self.heard else 0
        while self.c * self.K < n:
            out.append(self._chunk(min(self.K, n - self.c * self.K)))
        self._next_window()
        return out

    def _chunk(self, tokens: int):
        f0 = self.c * self.frames
        mel, self.run_max = chunk_log_mel(self.buf[:self.heard], self.win, f0, f0 + self.frames, self.bins,
                                          self.run_max)
        self.c += 1
        return mel, tokens, self.c == 1

    def _next_window(self):
        self.buf[:] = 0.0
        self.heard, self.c, self.run_max = 0, 0, -np.inf


def as_samples(x, sampling_rate: int, what: str) -> np.ndarray:
    """A mono float32 16 kHz piece (int16 PCM scaled by 1/32768), or a one-line :class:`SessionError`."""
    a = np.asarray(x)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype.kind not in "f":
        raise SessionError(f"{what}: expected audio samples (float, or int16 PCM), got dtype {a.dtype}")
    if a.size == 0:
        return np.zeros(0, np.float32)
    try:
        return check_waveform(a, sampling_rate, name=what, allow_silent=True)
    except AudioError as e:
        raise SessionError(str(e)) from None


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def encode_rows(config, params, state: EncoderState, mel, go, reset):
    """The next chunk of every row with ``go``: ``mel`` [B, 4K, bins] (time-major). ``state`` holds one
    encoder state per row (``pos`` [B]); rows with ``reset`` start a new window first. Returns the new
    state and the chunk embeddings [B, K, hidden] float32 (rows without ``go`` keep their state).

    Only ``pos`` and the conv edge are selected per row: K/V slots at or after a row's ``pos`` are never
    attended (masked by position) and are rewritten by that row's next chunk, so a reset does not clear
    them and a row without ``go`` may leave its (unread) keys there. No pass over the whole caches beyond
    the per-layer write (the caches are most of the bytes: 30 s windows)."""
    pos = jnp.where(reset, 0, state.pos)
    lm = _rows_where(reset, jnp.zeros_like(state.left_mel), state.left_mel, False)
    lh = _rows_where(reset, jnp.zeros_like(state.left_h1), state.left_h1, False)
    new, emb = chunk_step(config, params, EncoderState(state.k, state.v, lm, lh, pos), mel)  # per-row positions
    return EncoderState(new.k, new.v, _rows_where(go, new.left_mel, lm, False), _rows_where(go, new.left_h1, lh, False),
                        jnp.where(go, new.pos, pos)), emb


def _rows_where(mask, a, b, batch_axis_1: bool):
    shape = [1] * a.ndim
    shape[1 if batch_axis_1 else 0] = -1
    return jnp.where(mask.reshape(shape), a, b)


def init_rows_state(config, batch: int) -> EncoderState:
    """One chunk-encoder state per row: K/V ``[layers, B, positions, heads, head_dim]``, ``pos`` [B]."""
    from proactive_jax.models.audio import init_encoder_state

    st = init_encoder_state(config, batch)
    return st._replace(pos=jnp.zeros((batch,), jnp.int32))


class AudioRows:
    """The audio side of a batch of sessions: per row a :class:`LiveAudio` (host) and an encoder state
    (device), and the unit checks. ``next_units`` turns each row's pending chunks into one unit per row."""

    def __init__(self, config, params, batch: int):
        self.config, self.params, self.B = config, params, batch
        self.K = config.chunk
        self.hidden = config.text.hidden_size
        self.state = init_rows_state(config, batch)
        self.rows = [self._new_row() for _ in range(batch)]
        self.mode = [None] * batch  # "wave" or "embeds", fixed by a row's first push
        self.short = [False] * batch  # a shorter embeddings chunk was pushed: only finish() may follow
        self.pending: list[list] = [[] for _ in range(batch)]
        self.embed_tokens = [0] * batch  # tokens pushed as embeddings
        self.pieces = [0] * batch  # pushes received (for messages)

    # -- driven by SessionBatch.push / finish ---------------------------------------------------

    def push(self, sb, units, sampling_rate: int) -> list[list[int]]:
        """Check every row's unit (nothing changes on an error), buffer / queue them, feed the chunks."""
        checked = {}
        for i, u in enumerate(units):
            if u is None:
                continue
            what = f"push: session {i}, audio piece {self.pieces[i]}"
            if sb.closed[i]:
                raise SessionError(f"push: session {i} is closed (finish() was called); start a new session")
            kind, x = self.check(i, u, what, sampling_rate)
            need = len(sb.prompts[i]) + self.utterance_tokens(i, kind, x) + len(sb.ends[i])
            if not sb.done[i] and need > sb.max_source_len:
                raise SessionError(f"{what}: the source would reach {need} tokens with the end marker, over "
                                   f"max_source_len={sb.max_source_len} (nothing was fed; call finish() or use a "
                                   "larger max_source_len)")
            checked[i] = kind, x
        for i, (kind, x) in checked.items():
            self.pieces[i] += 1
            self.take(i, kind, x)
        return self.feed(sb)

    def flush(self, sb, rows) -> list[list[int]]:
        """The rest of the audio of ``rows`` (their last, possibly shorter, chunk), before the end marker."""
        for i in rows:
            self.take(i, None, None, final=True)
        return self.feed(sb)

    def feed(self, sb) -> list[list[int]]:
        """Read the pending chunks, one unit per row per round; returns the tokens written per row."""
        out = [[] for _ in range(self.B)]
        while (nxt := self.next_units({i for i in range(self.B) if sb.done[i]})) is not None:
            ulen, emb = nxt
            for i in np.flatnonzero(ulen):
                sb.units_pushed[i] += 1
                if not sb.done[i]:  # a finished row just counts its source
                    sb._queue[i] = [sb.audio_token_id] * int(ulen[i])
            for i, w in enumerate(sb._run(emb)):
                out[i] += w
        return out

    def utterance_tokens(self, i: int, kind: str, x) -> int:
        """Unit tokens of row i's audio if it ended right after ``x`` (nothing changes)."""
        if kind == "embeds":
            return self.embed_tokens[i] + x.shape[0]
        r = self.rows[i]
        return r.final_tokens(r.total + x.size)

    def _new_row(self) -> LiveAudio:
        enc = self.config.encoder
        return LiveAudio(self.K, enc.num_frames, enc.num_mel_bins)

    def reset_row(self, i: int):
        self.rows[i], self.mode[i], self.short[i], self.pending[i] = self._new_row(), None, False, []
        self.embed_tokens[i] = self.pieces[i] = 0

    def check(self, i: int, unit, what: str, sampling_rate: int = SAMPLING_RATE):
        """``("wave", samples)`` or ``("embeds", [k, hidden])``, or a one-line :class:`SessionError`."""
        if isinstance(unit, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in unit):
            raise SessionError(f"{what}: got token ids (a text unit), but this is an audio session: push a "
                               "waveform piece (float samples at 16 kHz) or chunk embeddings [k, hidden]")
        a = np.asarray(unit)
        if a.dtype.kind in "iub" and a.dtype != np.int16:
            raise SessionError(f"{what}: got {a.dtype} values (token ids?), but this is an audio session: push "
                               "float samples at 16 kHz (int16 PCM also accepted) or chunk embeddings [k, hidden]")
        kind = "embeds" if a.ndim == 2 and a.shape[1] == self.hidden else "wave"
        if self.mode[i] is not None and kind != self.mode[i]:
            raise SessionError(f"{what}: a {'waveform piece' if kind == 'wave' else 'chunk of embeddings'} after "
                               f"{'waveform' if self.mode[i] == 'wave' else 'embeddings'} pushes; one session "
                               "takes one kind")
        if self.short[i]:
            raise SessionError(f"{what}: the last chunk pushed was shorter than {self.K} tokens (the end of the "
                               "audio); only finish() may follow")
        if kind == "wave":
            return kind, as_samples(a, sampling_rate, what)
        if not 1 <= a.shape[0] <= self.K:
            raise SessionError(f"{what}: chunk embeddings of {a.shape[0]} tokens, expected {self.K} (the chunk "
                               f"length; a shorter chunk only at the end)")
        if not np.all(np.isfinite(a)):
            raise SessionError(f"{what}: chunk embeddings hold NaN or infinite values")
        return kind, a.astype(np.float32)

    def take(self, i: int, kind: str, x, final: bool = False):
        """Queue the chunks of a checked unit (``final``: also the rest of the audio) for row i."""
        if kind is not None:
            self.mode[i] = kind
        if kind == "embeds":
            self.pending[i].append(("embeds", x))
            self.short[i] = x.shape[0] < self.K
            self.embed_tokens[i] += x.shape[0]
        elif kind == "wave":
            self.pending[i].extend(("mel", c) for c in self.rows[i].add(x))
        if final and self.mode[i] == "wave":
            self.pending[i].extend(("mel", c) for c in self.rows[i].flush())

    def next_units(self, skip) -> tuple[np.ndarray, jax.Array] | None:
        """Pop one pending chunk per row (encoding the waveform ones, all rows in one call): ``(valid
        tokens [B] (0 = no unit), embeddings [B, K, hidden])``; None when nothing is pending. Rows in
        ``skip`` (stopped writing) only drop their chunk."""
        if not any(self.pending):
            return None
        enc = self.config.encoder
        ulen = np.zeros(self.B, np.int32)
        mel = np.zeros((self.B, 4 * self.K, enc.num_mel_bins), np.float32)
        go, reset = np.zeros(self.B, bool), np.zeros(self.B, bool)
        given = np.zeros((self.B, self.K, self.hidden), np.float32)
        for i in range(self.B):
            if not self.pending[i]:
                continue
            kind, item = self.pending[i].pop(0)
            if kind == "embeds":
                given[i, :item.shape[0]], ulen[i] = item, item.shape[0]
            else:
                mel[i], ulen[i], reset[i] = item
                go[i] = i not in skip
        emb = jnp.asarray(given)
        if go.any():
            self.state, enc_out = encode_rows(self.config, self.params, self.state, jnp.asarray(mel),
                                              jnp.asarray(go), jnp.asarray(reset))
            emb = jnp.where(jnp.asarray(go)[:, None, None], enc_out, emb)
        return ulen, emb
