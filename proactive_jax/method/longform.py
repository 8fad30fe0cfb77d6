"""Long-form live sessions: a stream without an end, on caches of a fixed size (a bounded window).

A long-form session is a chain of *segments*. Each segment is an ordinary streaming example on the session's
fixed-shape caches (:class:`~.session_batch.SessionBatch`: the same prefill and decision step as offline
decoding), so within a segment everything is exact as today. A segment closes when

- the model writes a segment boundary: an end-of-turn id, or a sentence end (``LongForm.boundary_ids``);
- the model wrote ``max_new_tokens`` in it; or
- its source window is full (the next unit would not fit): the end marker is read into it, the model writes
  out until one of the above, and the segment closes (so a model that never writes a boundary still writes).

The next segment starts at once from a re-encoded *recent context* (what is kept):

- source group: ``prompt`` (fixed prefix, positions from 0) + the most recent whole units read so far, up to
  ``carry_source`` tokens; all of it is the new segment's prompt (fed by the prefill, positions ``0 ..``);
- target group: ``header`` + the most recent written tokens, up to ``carry_target`` (from a word start; end-of-turn
  ids dropped), as the new segment's forced header (positions ``target_offset + 0 ..``).

Positions are re-based by construction: every segment is fed from position 0 (source) and ``target_offset``
(target), exactly the group-position pattern of one training example; nothing kept is shifted in place. If a
segment closes without having read a unit, the next one waits for the next unit and starts with it read (a forced
READ into its prompt): every segment reads at least one unit, so a push runs a bounded number of segments.

Turns (:meth:`LongFormBatch.end_turn`): the open segment reads the end marker and the model answers until
end-of-turn (sentence ends do not close it then); the turn joins the kept history in the chat layout (its units,
then ``end + header + answer + turn_separator``), which the next turn's segments hold in their prompt. ``finish``
answers the same way and closes the stream.

Exactness: what a segment computes equals a brute-force recomputation of the model over its windowed example
(:meth:`LongFormBatch.segment_example`: prompt + kept source + its units [+ end], header + kept target; the eos set
includes the boundaries); tested in ``tests/method/test_longform.py``. The design and the alternatives rejected are
in docs/decisions.md ("Long-form sessions").
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.data.example import StreamExample
from proactive_jax.errors import SessionError
from proactive_jax.method.decode import DecodeResult
from proactive_jax.method.heads import HeadSpec
from proactive_jax.method.session_batch import SessionBatch, _ids
from proactive_jax.method.session_programs import PENDING, rejoin_jit
from proactive_jax.method.shapes import bucket
from proactive_jax.models.config import ModelConfig
from proactive_jax.models.kinds import is_audio

SENTENCE_ENDS = (".", "!", "?", "。", "！", "？")


@dataclasses.dataclass(frozen=True)
class LongForm:
    """The bounded window of a long-form session.

    ``window``: source slots of a segment (prompt + kept source + the segment's units + end marker);
    ``carry_source`` / ``carry_target``: source / written tokens of finished segments kept as recent context;
    ``boundary_ids``: token ids that close a segment besides the end-of-turn ids (None: sentence ends, from the
    tokenizer in :meth:`StreamSession.from_tokenizer`, else none); ``keep_segments``: finished segments whose
    records the host keeps (:attr:`LongFormBatch.segments`)."""

    window: int = 256
    carry_source: int = 64
    carry_target: int = 32
    boundary_ids: tuple | None = None
    keep_segments: int = 64
    turn_separator: tuple | None = None  # ids between an answer and the next user turn's text (multi-turn)


def boundary_table(tokenizer) -> list[int]:
    """Ids of tokens that end a sentence (their text, spaces stripped, ends with ``. ! ?`` or a CJK stop)."""
    out = []
    for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if t and t.rstrip("Ġ▁ \n").endswith(SENTENCE_ENDS):
            out.append(i)
    return out


def turn_separator(tokenizer, system: str | None = None) -> tuple | None:
    """The ids the chat template puts between an assistant answer and the next user message's text (e.g.
    ``<|im_end|>\\n<|im_start|>user\\n``); None if the tokenizer has no usable chat template."""
    a, b = "\u2063ANSWER\u2063", "\u2063NEXT\u2063"
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": a}, {"role": "user", "content": b}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    except Exception:  # noqa: BLE001 -- any template failure means: no multi-turn layout
        return None
    if text.count(a) != 1 or text.count(b) != 1 or text.index(a) > text.index(b):
        return None
    between = text[text.index(a) + len(a):text.index(b)]
    return tuple(tokenizer(between, add_special_tokens=False)["input_ids"])


@dataclasses.dataclass
class Segment:
    """One segment of a row: its windowed example parts, the units it read, and its decisions (read counts
    relative to the segment; ``start`` = units of the stream read before it)."""

    prompt: list
    header: list
    start: int
    units: list = dataclasses.field(default_factory=list)
    ended: bool = False  # the end marker was read (window full, or finish)
    reason: str = ""  # why it closed: boundary, max_new, window, finish
    tokens: list = dataclasses.field(default_factory=list)
    phi: list = dataclasses.field(default_factory=list)
    scores: list = dataclasses.field(default_factory=list)
    writes: list = dataclasses.field(default_factory=list)
    reads: list = dataclasses.field(default_factory=list)
    forced: list = dataclasses.field(default_factory=list)
    absorbed: list | None = None  # the unit read into the prompt when the segment started (a forced READ)
    queued: list = dataclasses.field(default_factory=list)  # units given to the device in this segment
    final: bool = False  # the stream's end marker (finish) is read into this segment
    stops: tuple = ()  # the ids that closed it when written (boundaries; end-of-turn only once its turn ended)


class LongFormBatch:
    """Long-form live sessions, one per row (see the module docstring); the interface of :class:`SessionBatch`
    (``push``, ``finish``, ``result``, ``tokens``, ``phi``, ``records``) for streams of any length.

    ``tokens[i]`` / ``phi[i]``: everything row i wrote, with the stream's read count at each write (units of the
    whole stream; ``M + 1`` once the final end marker was read); ``segments[i]``: its last finished segments."""

    def __init__(self, config: ModelConfig, params, head: str | HeadSpec, *, prompts: Sequence, ends: Sequence,
                 headers: Sequence, max_new_tokens: int, long_form: LongForm, eos_ids=None, word_starts=None,
                 target_offset: int = 0, unit_capacity: int | None = None, fused: bool = True,
                 clock: Callable[[], float] = time.perf_counter, **unused):
        if is_audio(config):
            raise SessionError("long-form sessions stream text units (an audio model was given)")
        if unused:
            raise SessionError(f"long-form sessions take no {sorted(unused)} (the window sets the capacities)")
        lf = long_form
        prompts = [_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        ends = [_ids(e, f"ends[{i}]") for i, e in enumerate(ends)]
        headers = [_ids(h, f"headers[{i}]") for i, h in enumerate(headers)]
        U = int(unit_capacity or bucket(max([8] + [len(e) for e in ends])))
        P = bucket(max(len(p) for p in prompts) + int(lf.carry_source) + U)
        Hc = bucket(max(len(h) for h in headers) + int(lf.carry_target))
        E = max(len(e) for e in ends)
        if min(lf.window, lf.carry_source + 1, lf.carry_target + 1) < 1 or P + U + E > lf.window:
            raise SessionError(f"long-form window={lf.window} source tokens is too small: prompt + carried source "
                               f"({P} slots, carry_source={lf.carry_source}) + one unit ({U}) + end ({E}) must fit")
        V = config.vocab_size
        eos = list(config.eos_ids if eos_ids is None else ([eos_ids] if np.ndim(eos_ids) == 0 else eos_ids))
        self.end_of_turn = [int(x) for x in eos]
        self.boundaries = sorted(set(self.end_of_turn) | {int(b) for b in (lf.boundary_ids or ()) if 0 <= b < V})
        self._stop = np.zeros((len(prompts), V), bool)  # per row: the ids that close its segment
        self._stop[:, self.boundaries] = True
        self.inner = SessionBatch(config, params, head, prompts=prompts, ends=ends, headers=headers,
                                  max_new_tokens=max_new_tokens, eos_ids=self.boundaries, word_starts=word_starts,
                                  target_offset=target_offset, max_source_len=lf.window, unit_capacity=U,
                                  prompt_capacity=P, header_capacity=Hc, fused=fused, clock=clock)
        last = int(target_offset) + Hc + int(max_new_tokens) - 1
        if max(last, lf.window - 1) >= config.max_position_embeddings:
            raise SessionError(f"long-form window={lf.window} with header + carry_target + max_new_tokens (up to "
                               f"position {last}) exceeds max_position_embeddings={config.max_position_embeddings}")
        self.long_form, self.config, self.clock = lf, config, clock
        self.audio = None
        self.B = B = len(prompts)
        self.base_prompts, self.base_headers, self.ends = prompts, headers, ends
        self.word_starts, self.eos_ids = self.inner.word_starts, self.end_of_turn
        self.prefill_seconds = self.inner.prefill_seconds
        self.tokens, self.phi = [[] for _ in range(B)], [[] for _ in range(B)]
        self.records = [dict(scores=[], writes=[], reads=[], forced=[], seconds=[]) for _ in range(B)]
        self.units_pushed, self.closed = [0] * B, [False] * B
        self.segments = [collections.deque(maxlen=lf.keep_segments) for _ in range(B)]
        self._history = [collections.deque() for _ in range(B)]  # (is an answer, token ids), oldest first
        self._carry_target = [[] for _ in range(B)]
        self._turn_written = [[] for _ in range(B)]  # the current turn's writes (its most recent ones)
        self._sync_stops()
        self._read = [0] * B  # units of the stream read so far
        self._seg = [Segment(list(p), list(h), 0, stops=tuple(self.boundaries)) for p, h in zip(prompts, headers)]
        self._open = [True] * B  # a segment is live on the device (else the row waits for a unit to start one)
        self._synced = [0] * B  # decisions of the open segment already copied into the row's records

    # -- the public operations --------------------------------------------------------------------

    done = property(lambda self: list(self.closed), doc="per row: finish() was called (a long stream never stops)")
    _pending = property(lambda self: self.inner._pending)

    def push(self, units: Sequence) -> list[list[int]]:
        """Give row i its next unit ``units[i]`` (token ids; None = nothing new). Returns per row the tokens
        written in response. Bad units raise :class:`SessionError` before anything runs."""
        if len(units) != self.B:
            raise SessionError(f"push: expected one unit (or None) per session ({self.B}), got {len(units)}")
        clean = [None if u is None else self._check_unit(i, u) for i, u in enumerate(units)]
        before = [len(t) for t in self.tokens]
        full = [i for i, u in enumerate(clean) if u is not None and self._open[i] and
                self.inner._visible[i] + len(u) + len(self.ends[i]) > self.long_form.window]
        if full:  # the source window is full: end those segments (the model writes out), start the next ones
            self.inner.finish(full)
            self._close(full, "window")
        waiting = [i for i, u in enumerate(clean) if u is not None and not self._open[i]]
        for i, u in enumerate(clean):
            if u is not None:
                self.units_pushed[i] += 1
                if self._open[i]:
                    self.inner._queue[i] = u
                    self.inner.units_pushed[i] += 1
                    self._seg[i].queued.append(u)
        if waiting:
            self._start(waiting, {i: clean[i] for i in waiting}, {})
        self._advance()
        return [self.tokens[i][before[i]:] for i in range(self.B)]

    def finish(self, rows: Sequence[int] | None = None) -> list[list[int]]:
        """End the streams of ``rows`` (default: all open): the open segment reads the end marker and the model
        answers until end-of-turn (or ``max_new_tokens``). Returns per row the tokens written now."""
        rows = self._rows(rows, "finish")
        before = [len(t) for t in self.tokens]
        self._answer(rows, final=True)
        for i in rows:
            self.closed[i], self._open[i] = True, False
        return [self.tokens[i][before[i]:] for i in range(self.B)]

    def end_turn(self, rows: Sequence[int] | None = None) -> list[list[int]]:
        """End the user's turn in ``rows`` (default: all open): the open segment reads the end marker, the model
        answers until end-of-turn (or ``max_new_tokens``), and the turn (user text, answer) joins the history
        that the next turn's segments keep in their prompt (chat layout: ``end + header + answer +
        turn_separator``). The next unit starts the next turn. Returns per row the tokens written now."""
        if self.long_form.turn_separator is None:
            raise SessionError("end_turn: multi-turn needs LongForm.turn_separator (the ids between an answer and "
                               "the next user turn; StreamSession.from_tokenizer derives it from the chat template)")
        rows = self._rows(rows, "end_turn")
        before = [len(t) for t in self.tokens]
        self._answer(rows, final=False)
        for i in rows:
            self._open[i] = False
        return [self.tokens[i][before[i]:] for i in range(self.B)]

    def result(self, i: int) -> DecodeResult:
        """Row i's whole stream so far as a :class:`.decode.DecodeResult` (read counts of the whole stream)."""
        self._sync(i)
        r, toks = self.records[i], np.asarray(self.tokens[i], np.int32)
        return DecodeResult(tokens=toks, phi=np.asarray(self.phi[i], np.int32),
                            scores=np.asarray(r["scores"], np.float32), writes=np.asarray(r["writes"], bool),
                            reads=np.asarray(r["reads"], np.int32), forced=np.asarray(r["forced"], bool),
                            M=self.units_pushed[i], finished=bool(len(toks) and int(toks[-1]) in self.end_of_turn),
                            seconds=np.asarray(r["seconds"], np.float64))

    def segment_example(self, seg: Segment, i: int = 0) -> StreamExample | None:
        """The windowed example a segment computes on (for a brute-force recomputation): prompt + kept source,
        its units, the end marker, header + kept target. A segment that read no unit gets one placeholder unit
        that is never read (decisions at n <= M do not depend on M); None if it read the end marker only
        (M = 0: not a StreamExample)."""
        units = [tuple(u) for u in seg.units]
        if not units:
            if seg.ended:
                return None
            units = [tuple(self.ends[i])]
        return StreamExample(prompt=tuple(seg.prompt), units=tuple(units), end=tuple(self.ends[i]),
                             header=tuple(seg.header), target=tuple(self.end_of_turn or [0])[:1])

    @property
    def cache_shape(self) -> tuple:
        """The shape of one layer group's key cache: fixed for the session's life."""
        return tuple(self.inner.state["cache"].k.shape)

    # -- internals ---------------------------------------------------------------------------------

    def _rows(self, rows, op: str) -> list[int]:
        rows = [i for i in range(self.B) if not self.closed[i]] if rows is None else list(rows)
        for i in rows:
            if not isinstance(i, (int, np.integer)) or not 0 <= i < self.B or self.closed[i]:
                raise SessionError(f"{op}: session {i!r} does not exist or is closed (finish() was called)")
        return rows

    def _sync_stops(self):
        self.inner._tables["eos"] = jnp.asarray(self._stop)
        self.inner._sync_rows()

    def _answer(self, rows, final: bool):
        """The open segments of ``rows`` (rows waiting for a unit: a new segment on the kept context) read the end
        marker and write until end-of-turn or ``max_new_tokens``; then they close."""
        if not rows:
            return
        idle = [i for i in rows if not self._open[i]]
        if idle:
            self._start(idle, {}, {})
        for i in rows:
            self._stop[i] = False
            self._stop[i, self.end_of_turn] = True
            self._seg[i].final, self._seg[i].stops = final, tuple(self.end_of_turn)
        self._sync_stops()
        self.inner.finish(rows)
        self._close(rows, "finish" if final else "turn", restart=False)
        for i in rows:
            self._stop[i, self.boundaries] = True
        self._sync_stops()

    def _check_unit(self, i: int, unit) -> list[int]:
        if self.closed[i]:
            raise SessionError(f"push: session {i} is closed (finish() was called); start a new session")
        ids = _ids(unit, f"push: session {i}, unit {self.units_pushed[i]}")
        if not ids:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]} is empty (nothing was fed)")
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]}: a token id is outside the model "
                               f"vocabulary [0, {self.config.vocab_size}) (nothing was fed)")
        U = self.inner.shapes.unit_cap
        if len(ids) > U:
            raise SessionError(f"push: session {i}, unit {self.units_pushed[i]} has {len(ids)} tokens and cannot "
                               f"fit the long-form window={self.long_form.window} (a unit holds at most {U} "
                               "tokens; nothing was fed)")
        return ids

    def _advance(self):
        """Run the queued units and pending writes; close every segment the model ends, start the next ones,
        and run again, until no row can advance. Every segment reads a unit, so this ends."""
        self.inner._run()
        while True:
            for i in range(self.B):
                self._sync(i)
            ended = [i for i in range(self.B) if self._open[i] and self.inner.done[i]]
            if not ended:
                return
            self._close(ended, None)
            self.inner._run()

    def _glob(self, i: int, n: int) -> int:
        """The stream's read count for the open segment's read count ``n`` (the end marker of a window-full
        segment is not a unit of the stream; the final one counts as M + 1)."""
        seg = self._seg[i]
        if seg.final and n > len(seg.queued):
            return self.units_pushed[i] + 1
        return seg.start + min(n, len(seg.queued))

    def _sync(self, i: int):
        """Copy row i's new decisions of its open segment into the segment and the row's stream records."""
        inner, seg, out = self.inner, self._seg[i], self.records[i]
        rec = inner.records[i]
        for d in range(self._synced[i], len(rec["writes"])):
            n, write = rec["reads"][d], bool(rec["writes"][d])
            for name in ("scores", "writes", "reads", "forced"):
                getattr(seg, name).append(rec[name][d])
            if write:
                tok = inner.tokens[i][len(seg.tokens)]
                seg.tokens.append(tok)
                seg.phi.append(n)
                self.tokens[i].append(tok)
                self.phi[i].append(self._glob(i, n))
            out["scores"].append(rec["scores"][d])
            out["writes"].append(write)
            out["reads"].append(self._glob(i, n))
            out["forced"].append(rec["forced"][d])
            out["seconds"].append(rec["seconds"][d])
        self._synced[i] = len(rec["writes"])

    def _close(self, rows, reason: str | None, restart: bool = True):
        """Close the open segments of ``rows``: keep the recent context, then start the next segments (at once
        when the closed one read a unit; else with the next unit read into its prompt, once it arrives)."""
        lf, inner = self.long_form, self.inner
        now, absorb, queued = [], {}, {}
        for i in rows:
            self._sync(i)
            seg = self._seg[i]
            k = min(inner._n[i], len(seg.queued))
            seg.units, unread = seg.queued[:k], seg.queued[k:]
            seg.ended = inner._n[i] > len(seg.queued)
            last = seg.tokens[-1] if seg.tokens else None
            seg.reason = reason or ("end-of-turn" if last in self.end_of_turn else
                                    "boundary" if last in self.boundaries else "max_new")
            self._read[i] = seg.start + k
            self.segments[i].append(seg)
            history = self._history[i]
            history.extend((False, u) for u in ([seg.absorbed] if seg.absorbed is not None else []) + seg.units)
            own = [t for t in seg.tokens if t not in self.end_of_turn]
            self._turn_written[i] = (self._turn_written[i] + own)[-lf.carry_source:]
            if reason == "turn":  # the turn joins the history in the chat layout; the target group starts afresh
                answer = self._turn_written[i][len(self._turn_written[i]) - lf.carry_source // 2:]
                history.append((True, list(self.ends[i]) + self.base_headers[i] + answer + list(lf.turn_separator)))
                self._carry_target[i], self._turn_written[i] = [], []
            total = sum(len(u) for _, u in history)
            while history and total > lf.carry_source:  # whole pieces (an answer piece starts with end + header)
                total -= len(history.popleft()[1])
            if reason != "turn":
                self._carry_target[i] = self._kept_target(self._carry_target[i] + own)
            if not restart:
                continue
            if k or seg.absorbed is not None:
                now.append(i)
                if unread:
                    queued[i] = unread[0]
            elif unread:
                absorb[i] = unread[0]
            else:
                self._open[i] = False
        if now or absorb:
            self._start(now + list(absorb), absorb, queued)

    def _kept_target(self, written: list) -> list:
        """The most recent ``carry_target`` written ids, from a word start."""
        n = self.long_form.carry_target
        cut = max(len(written) - n, 0)
        starts = [c for c in range(cut, len(written)) if self.word_starts[written[c]]]
        return written[starts[0] if starts else cut:] if n else []

    def _start(self, rows, absorb: dict, queued: dict):
        """New segments in ``rows`` (one prefill program for all): prompt + kept source (+ the absorbed unit,
        read now), header + kept target; a unit left unread by the closed segment is queued to the new one."""
        inner = self.inner
        arr = np.zeros((self.B, inner.shapes.prompt_cap), np.int32)
        mask = np.zeros(self.B, bool)
        for i in rows:
            prompt = self.base_prompts[i] + [t for _, u in self._history[i] for t in u] + list(absorb.get(i, []))
            header = self.base_headers[i] + self._carry_target[i]
            if i in absorb:  # a forced READ: the segment starts with the unit read
                r = self.records[i]
                for name, x in (("scores", 0.0), ("writes", False), ("reads", self._read[i]), ("forced", True),
                                ("seconds", 0.0)):
                    r[name].append(x)
                self._read[i] += 1
            self._seg[i] = Segment(prompt, header, self._read[i], absorbed=absorb.get(i), stops=tuple(self.boundaries))
            inner.prompts[i], inner.headers[i] = prompt, header
            inner._set_row(i, prompt, header, arr)
            mask[i] = True
        inner._sync_rows()
        inner.state = rejoin_jit(inner.shapes, inner.params, inner.head_vals, inner.rows, inner.state,
                                 jnp.asarray(arr), jnp.asarray(mask))
        inner._pending = jax.device_get({k: inner.state[k] for k in PENDING})
        for i in rows:
            inner._fresh_row(i)
            self._open[i], self._synced[i] = True, 0
            if i in queued:
                inner._queue[i], inner.units_pushed[i] = queued[i], 1
                self._seg[i].queued.append(queued[i])
