"""Live streaming, several rows at once: :class:`SessionBatch`, the row state machine (join, push, finish, release,
re-prefill; the stepwise and fused paths over one cache layout) behind :class:`~proactive_jax.method.session.StreamSession`.
The jitted programs are in :mod:`proactive_jax.method.session_programs`; how a session runs is told in
:mod:`proactive_jax.method.session`.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models.config import ModelConfig
from proactive_jax.method.decode import DecodeResult, StepShapes, decode_params
from proactive_jax.method.decode_inputs import check_ids, vocab_table
from proactive_jax.method.shapes import bucket
from proactive_jax.method.session_programs import PENDING as _PENDING, advance_jit, blank_state, rejoin_jit, step_jit, unit_embeds_jit
from proactive_jax.method.heads import HeadSpec, encode_head, parse_head
from proactive_jax.errors import SessionError
from proactive_jax.models.kinds import is_audio

log = logging.getLogger(__name__)

M_UNKNOWN = 1 << 30  # the device's M before finish(): larger than any read count




def _check(ids, vocab: int, what: str):
    try:
        check_ids(ids, vocab, what)
    except ValueError as e:
        raise SessionError(str(e)) from None


def _check_parts(i: int, prompt, end, header, vocab: int):
    for part, ids in (("prompt", prompt), ("end", end), ("header", header)):
        _check(ids, vocab, f"session {i}: {part}")
    if not header:
        raise SessionError(f"session {i}: header is empty: decoding needs at least one header token")
    if not end:
        raise SessionError(f"session {i}: end is empty: the end-of-source marker needs a token")


def _ids(x, what: str) -> list[int]:
    import operator

    if isinstance(x, np.ndarray) and x.dtype.kind not in "iu":
        raise SessionError(f"{what}: expected a list of token ids, got a {x.dtype} array{_AUDIO_HINT}")
    try:
        out = [operator.index(t) for t in x]
    except (TypeError, ValueError):
        raise SessionError(f"{what}: expected a list of token ids, got {_short(x)}{_AUDIO_HINT}") from None
    return out


_AUDIO_HINT = " (audio goes to a session made with a Qwen2-Audio config)"


def _short(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


class SessionBatch:
    """Several live sessions advanced together (row i = session i).

    ``prompts``, ``ends``, ``headers``: token-id lists per session (as in ``StreamExample``).
    ``max_new_tokens``, ``eos_ids`` (None: ``config.eos_ids``), ``word_starts`` (bool per vocabulary id;
    None: every token starts a word), ``target_offset`` as in :func:`.decode.stream_decode`.
    Capacity (fixed: the caches never grow and the step never recompiles): ``max_source_len`` source
    tokens per session (prompt + units + end; default ``min(1024, max_position_embeddings)``) and
    ``unit_capacity`` tokens per unit (default 8, at least the end marker's length); ``prompt_capacity``,
    ``header_capacity`` (default: the longest, bucketed) let sessions of different prompt / header lengths
    share one compiled program. ``fused`` (default): each push/finish is one dispatch, a device
    ``while_loop`` over the step (per-decision time = push time / its steps); ``fused=False``: one
    dispatch per step with the decision read back after each (exact per-decision wall-clock, more host
    overhead). ``clock``: the timer for the wall-clock times (seconds).
    """

    def __init__(self, config: ModelConfig, params, head: str | HeadSpec, *, prompts: Sequence, ends: Sequence,
                 headers: Sequence, max_new_tokens: int, eos_ids=None, word_starts=None,
                 target_offset: int = 0, max_source_len: int | None = None, unit_capacity: int | None = None,
                 prompt_capacity: int | None = None, header_capacity: int | None = None, fused: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.audio = None
        if is_audio(config):  # live audio: see .audio_session
            from proactive_jax.method.audio_session import AudioRows

            self.audio = AudioRows(config, params, len(prompts))
            self.audio_token_id = int(config.audio_token_index)
            unit_capacity = unit_capacity or bucket(max([config.chunk] + [len(e) for e in ends]))
            if unit_capacity < config.chunk:
                raise SessionError(f"unit_capacity={unit_capacity} is smaller than an audio chunk "
                                   f"({config.chunk} tokens)")
            config, params = config.text, params["language_model"]
        params = decode_params(params)
        self.config, self.params, self.clock, self.fused = config, params, clock, bool(fused)
        self.spec = parse_head(head)
        self.head_vals = encode_head(self.spec, config.num_hidden_layers)
        V = config.vocab_size
        prompts = [_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        ends = [_ids(e, f"ends[{i}]") for i, e in enumerate(ends)]
        headers = [_ids(h, f"headers[{i}]") for i, h in enumerate(headers)]
        B = len(prompts)
        if B == 0 or len(ends) != B or len(headers) != B:
            raise SessionError(f"need one prompt, end and header per session; got {len(prompts)} prompts, "
                               f"{len(ends)} ends, {len(headers)} headers")
        for i in range(B):
            _check_parts(i, prompts[i], ends[i], headers[i], V)
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise SessionError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not isinstance(target_offset, (int, np.integer)) or target_offset < 0:
            raise SessionError(f"target_offset must be a non-negative int, got {target_offset!r} "
                               "('contiguous' needs the source length in advance: not available live)")
        src_cap = int(max_source_len or min(1024, config.max_position_embeddings))
        U = int(unit_capacity or bucket(max([8] + [len(e) for e in ends])))
        if max(len(e) for e in ends) > U:
            raise SessionError(f"unit_capacity={U} is smaller than an end marker ({max(len(e) for e in ends)} tokens)")
        for i in range(B):
            if len(prompts[i]) + 1 + len(ends[i]) > src_cap:
                raise SessionError(f"session {i}: prompt ({len(prompts[i])}) + one unit + end ({len(ends[i])}) "
                                   f"do not fit max_source_len={src_cap}")
        last = max(src_cap - 1, int(target_offset) + max(len(h) for h in headers) + int(max_new_tokens) - 1)
        if last >= config.max_position_embeddings:
            raise SessionError(f"position {last} (max_source_len {src_cap}, header + max_new_tokens "
                               f"{int(max_new_tokens)}) exceeds max_position_embeddings={config.max_position_embeddings}")
        ws = np.ones(V, bool) if word_starts is None else vocab_table(word_starts, V, "word_starts", True)
        eos_ids = config.eos_ids if eos_ids is None else eos_ids
        eos_ids = [int(eos_ids)] if np.ndim(eos_ids) == 0 else [int(x) for x in eos_ids]
        _check(eos_ids, V, "eos_ids")
        eos = np.zeros(V, bool)
        eos[eos_ids] = True
        self.eos_ids, self.word_starts = eos_ids, ws

        P = bucket(max([len(p) for p in prompts] + [int(prompt_capacity or 0)]))
        Hc = bucket(max([len(h) for h in headers] + [int(header_capacity or 0)]))
        self.shapes = StepShapes(config, self.spec.needs_stats, False, int(max_new_tokens), P,
                                 U, bucket(src_cap, 8), Hc, self.spec.needs_src_attn)
        self.step_shapes = self.shapes._replace(prompt_cap=0)  # the step never reads the prompt cap
        self.max_source_len = src_cap
        prompt = np.zeros((B, P), np.int32)
        # host copies of the per-row values (a row that is released / joined changes its own entries)
        self._host = dict(M=np.full(B, M_UNKNOWN, np.int32), plen=np.zeros(B, np.int32),
                          header=np.zeros((B, Hc), np.int32), hlen=np.zeros(B, np.int32),
                          off=np.full(B, int(target_offset), np.int32), valid=np.ones(B, bool))
        for i in range(B):
            self._set_row(i, prompts[i], headers[i], prompt)
        self._M = self._host["M"]
        self._tables = dict(word_start=jnp.asarray(ws), eos=jnp.asarray(eos))
        self._sync_rows()
        self.B, self.prompts, self.ends, self.headers = B, prompts, ends, headers
        self.tokens, self.phi, self.records = [None] * B, [None] * B, [None] * B
        self.units_pushed, self.closed, self._visible, self._n = [0] * B, [False] * B, [0] * B, [0] * B
        self._queue: list[list[int] | None] = [None] * B
        for i in range(B):
            self._fresh_row(i)
        self.step_seconds: list[float] = []  # wall-clock of every step (one decision of each advancing row)
        t0 = clock()
        # the prefill is a join of every row (one program for the start and for later joins)
        blank = blank_state(self.shapes, B, params, self.head_vals, self.rows, prompt)
        self.state = rejoin_jit(self.shapes, params, self.head_vals, self.rows, blank,
                                 jnp.asarray(prompt), jnp.ones((B,), bool))
        self._pending = jax.device_get({k: self.state[k] for k in _PENDING})
        self.prefill_seconds = clock() - t0

    # -- the public operations ----------------------------------------------------------------

    @property
    def done(self) -> list[bool]:
        """Per row: the model stopped writing (an eos id, or max_new_tokens)."""
        return [bool(x) for x in self._pending["done"]]

    def push(self, units: Sequence, *, sampling_rate: int = 16000) -> list[list[int]]:
        """Give row i the next source unit ``units[i]`` (None = nothing new for that row): token ids, or in
        an audio session a waveform piece of any length (16 kHz mono; ``sampling_rate`` must be 16000) or
        one chunk's embeddings (see :mod:`.audio_session`).

        Returns, per row, the token ids written in response (possibly empty). All units are checked
        before anything runs: a bad one raises :class:`SessionError` and no row changes."""
        if len(units) != self.B:
            raise SessionError(f"push: expected one unit (or None) per session ({self.B}), got {len(units)}")
        if self.audio is not None:
            return self.audio.push(self, units, sampling_rate)
        clean = [None if u is None else self._check_unit(i, u) for i, u in enumerate(units)]
        for i, u in enumerate(clean):
            if u is not None:
                self.units_pushed[i] += 1
                if not self.done[i]:
                    self._queue[i] = u  # a finished row just counts its source
        return self._run()

    def finish(self, rows: Sequence[int] | None = None) -> list[list[int]]:
        """Feed the end marker to ``rows`` (default: all open rows) and write until they stop; close them.
        Returns per row the tokens written now (empty for rows not finished)."""
        rows = [i for i in range(self.B) if not self.closed[i]] if rows is None else list(rows)
        for i in rows:
            if not 0 <= i < self.B:
                raise SessionError(f"finish: row {i} does not exist (the batch has {self.B} sessions)")
            if self.closed[i]:
                raise SessionError(f"finish: session {i} is closed (finish() was already called)")
        out = self.audio.flush(self, rows) if self.audio is not None else [[] for _ in range(self.B)]
        for i in rows:
            self._M[i] = self.units_pushed[i]
            self.closed[i] = True
            if not self.done[i]:
                self._queue[i] = list(self.ends[i])
        if rows:
            self._sync_rows()
        for i, w in enumerate(self._run()):
            out[i] += w
        assert all(self.done[i] for i in rows), "a finished row must write until eos or max_new_tokens"
        return out

    def release(self, i: int) -> None:
        """Free row i (e.g. its session finished): it stops at once and decides nothing more until a
        :meth:`join`; its records (:meth:`result`) stay readable until then. No recompilation."""
        self._row_index(i, "release")
        self._host["valid"][i] = False  # the prefill of an invalid row marks it done
        self._reprefill(i, [0], [0])
        self.closed[i] = True

    def join(self, i: int, *, prompt, end, header) -> None:
        """Start a new session in row i (free, or finished), with its own prompt / end / header (token-id
        lists; within this batch's capacities). The row's caches, decision state, records and audio state
        are reset; the result equals a fresh session's. Other rows are unchanged; nothing recompiles."""
        self._row_index(i, "join")
        if not (self.closed[i] or self.done[i]):
            raise SessionError(f"join: row {i} holds a live session (finish() or release() it first)")
        prompt, end, header = (_ids(x, f"join: row {i}: {n}") for x, n in ((prompt, "prompt"), (end, "end"),
                                                                               (header, "header")))
        _check_parts(i, prompt, end, header, self.config.vocab_size)
        caps = [("prompt", len(prompt), self.shapes.prompt_cap), ("header", len(header), self.shapes.header_cap),
                ("end", len(end), self.shapes.unit_cap)]
        for what, n, cap in caps:
            if n > cap:
                raise SessionError(f"join: row {i}: {what} of {n} tokens is over this batch's capacity of {cap}")
        if len(prompt) + 1 + len(end) > self.max_source_len:
            raise SessionError(f"join: row {i}: prompt + one unit + end do not fit "
                               f"max_source_len={self.max_source_len}")
        last = int(self._host["off"][i]) + len(header) + self.shapes.max_new - 1
        if last >= self.config.max_position_embeddings:
            raise SessionError(f"join: row {i}: header + max_new_tokens reach position {last}, over "
                               f"max_position_embeddings={self.config.max_position_embeddings}")
        self.prompts[i], self.ends[i], self.headers[i] = prompt, end, header
        self._host["valid"][i] = True
        self._reprefill(i, prompt, header)
        self._fresh_row(i)
        if self.audio is not None:
            self.audio.reset_row(i)

    def result(self, i: int) -> DecodeResult:
        """Row i's decode so far, as a :class:`.decode.DecodeResult` (with ``seconds`` per decision)."""
        r = self.records[i]
        M = self.units_pushed[i]
        toks = np.asarray(self.tokens[i], np.int32)
        return DecodeResult(tokens=toks, phi=np.asarray(self.phi[i], np.int32),
                            scores=np.asarray(r["scores"], np.float32), writes=np.asarray(r["writes"], bool),
                            reads=np.asarray(r["reads"], np.int32), forced=np.asarray(r["forced"], bool), M=M,
                            finished=bool(len(toks) and self.eos_ids and int(toks[-1]) in self.eos_ids),
                            seconds=np.asarray(r["seconds"], np.float64))

    # -- internals ----------------------------------------------------------------------------

    def _row_index(self, i, op: str):
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.B:
            raise SessionError(f"{op}: row {i!r} does not exist (the batch has {self.B} sessions)")

    def _set_row(self, i: int, prompt, header, prompt_arr):
        h = self._host
        h["M"][i], h["plen"][i], h["hlen"][i] = M_UNKNOWN, len(prompt), len(header)
        h["header"][i] = 0
        h["header"][i, :len(header)] = header
        prompt_arr[i, :len(prompt)] = prompt

    def _sync_rows(self):
        self.rows = dict({k: jnp.asarray(v) for k, v in self._host.items()}, **self._tables)

    def _fresh_row(self, i: int):
        """Host records of row i as for a new session."""
        self.tokens[i], self.phi[i] = [], []
        self.records[i] = dict(scores=[], writes=[], reads=[], forced=[], seconds=[])
        self.units_pushed[i], self.closed[i], self._n[i], self._queue[i] = 0, False, 0, None
        self._visible[i] = len(self.prompts[i])

    def _reprefill(self, i: int, prompt, header):
        """Row i's device state re-made by the prefill (the whole batch's program; only row i is kept)."""
        arr = np.zeros((self.B, self.shapes.prompt_cap), np.int32)
        self._set_row(i, prompt, header, arr)
        self._sync_rows()
        mask = np.zeros(self.B, bool)
        mask[i] = True
        self.state = rejoin_jit(self.shapes, self.params, self.head_vals, self.rows, self.state, jnp.asarray(arr),
                                 jnp.asarray(mask))
        self._pending = jax.device_get({k: self.state[k] for k in _PENDING})

    def _check_unit(self, i: int, unit) -> list[int]:
        if self.closed[i]:
            raise SessionError(f"push: session {i} is closed (finish() was called); start a new session")
        ids = _ids(unit, f"push: session {i}, unit {self.units_pushed[i]}")
        if not ids:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]} is empty; a unit needs at "
                               "least one token (nothing was fed; the session is unchanged)")
        _check(ids, self.config.vocab_size, f"push: session {i}, unit {self.units_pushed[i]}")
        U = self.shapes.unit_cap
        if len(ids) > U:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]} has {len(ids)} tokens, over "
                               f"unit_capacity={U}; create the session with a larger unit_capacity "
                               "(nothing was fed; the session is unchanged)")
        need = self._visible[i] + len(ids) + len(self.ends[i])
        if not self.done[i] and need > self.max_source_len:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]}: the source would reach {need} "
                               f"tokens with the end marker, over max_source_len={self.max_source_len} "
                               "(nothing was fed; call finish() or use a larger max_source_len)")
        return ids

    def _run(self, chunk_embeds=None) -> list[list[int]]:
        """Advance every row that can (pending WRITE, or READ with a queued unit) until none can.
        Audio sessions: the queued units are fed as ``chunk_embeds`` [B, K, D] (audio chunks) or, when
        None, as the embeddings of their ids (the end marker)."""
        out = [[] for _ in range(self.B)]
        unit = np.zeros((self.B, self.shapes.unit_cap), np.int32)
        ulen = np.zeros(self.B, np.int32)
        for i, q in enumerate(self._queue):
            if q is not None:
                unit[i, :len(q)], ulen[i] = q, len(q)
        embeds = None
        if self.audio is not None:
            D = self.config.hidden_size
            given = chunk_embeds is not None
            chunk_embeds = chunk_embeds if given else jnp.zeros((self.B, self.audio.K, D), jnp.float32)
            embeds = unit_embeds_jit(self.config, self.params, jnp.asarray(unit), chunk_embeds,
                                      jnp.asarray(not given))
        if self.fused:
            self._run_fused(unit, ulen, out, embeds)
        else:
            self._run_stepwise(unit, ulen, out, embeds)
        return out

    def _record(self, i, write, cand, score, forced, seconds, ulen, out):
        r = self.records[i]
        r["scores"].append(float(score))
        r["writes"].append(bool(write))
        r["reads"].append(self._n[i])
        r["forced"].append(bool(forced))
        r["seconds"].append(seconds)
        if write:
            self.tokens[i].append(int(cand))
            self.phi[i].append(self._n[i])
            out[i].append(int(cand))
        else:
            self._visible[i] += int(ulen[i])
            self._n[i] += 1
            self._queue[i] = None

    def _run_stepwise(self, unit, ulen, out, embeds=None):
        """One dispatch per step; the host reads every decision back (exact per-decision wall-clock)."""
        unit_d, ulen_d = jnp.asarray(unit), jnp.asarray(ulen)
        while True:
            p = self._pending
            go = np.array([not p["done"][i] and (bool(p["write"][i]) or self._queue[i] is not None)
                           for i in range(self.B)])
            if not go.any():
                return
            t0 = self.clock()
            self.state = step_jit(self.step_shapes, self.params, self.head_vals, self.rows, self.state,
                                   unit_d, ulen_d, jnp.asarray(go), embeds)
            nxt = jax.device_get({k: self.state[k] for k in _PENDING})
            dt = self.clock() - t0
            self.step_seconds.append(dt)
            for i in np.flatnonzero(go):
                self._record(i, p["write"][i], p["cand"][i], p["score"][i], p["forced"][i], dt, ulen, out)
            self._pending = nxt

    def _run_fused(self, unit, ulen, out, embeds=None):
        """One dispatch per push: a device ``while_loop`` over the same step; per-decision time = the push's
        wall-clock / its steps (the writes of a push reach the host together, at its end)."""
        has = np.array([q is not None for q in self._queue])
        t0 = self.clock()
        self.state, rec, k, steps, nxt = advance_jit(self.step_shapes, self.params, self.head_vals, self.rows,
                                                      self.state, jnp.asarray(unit), jnp.asarray(ulen),
                                                      jnp.asarray(has), embeds)
        rec, k, steps, nxt = jax.device_get((rec, k, steps, nxt))
        dt = self.clock() - t0
        per = dt / max(int(steps), 1)
        self.step_seconds.extend([per] * int(steps))
        for i in range(self.B):
            for d in range(int(k[i])):
                self._record(i, rec["write"][i, d], rec["cand"][i, d], rec["score"][i, d], rec["forced"][i, d],
                             per, ulen, out)
        self._pending = nxt
