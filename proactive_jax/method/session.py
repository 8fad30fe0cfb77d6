"""Live streaming: an incremental session over the decoder's jitted prefill and decision step.

A :class:`StreamSession` serves one live source: :meth:`~StreamSession.push` takes the next source unit
(token ids; in an audio session a waveform piece or chunk embeddings, see :mod:`.audio_session`) and
returns the tokens the model writes in response; :meth:`~StreamSession.finish` feeds the end marker and
returns the rest. A :class:`SessionBatch` advances several sessions together, one row each, the way a
server would; a row whose session ended can be released (:meth:`~SessionBatch.release`) and a new
session join its slot (:meth:`~SessionBatch.join`). Both run :func:`.decode.prefill` and then
:func:`.decode.decision_step` per decision, on fixed-shape caches (capacity fixed at construction; the programs are in
:mod:`.session_programs`): the same functions the batch decoder loops over, so a session's tokens and read
schedule equal :func:`.decode.stream_decode`'s on the whole example. Nothing read is ever re-encoded: every
unit is fed once, into its own cache slots; nothing recompiles per push, per new session or per join.

How a push runs: the device state always holds the pending decision for the current logits (see
:mod:`.decode`). The host advances every row whose pending decision is WRITE, or READ with a queued unit;
a row that wants to READ with nothing queued waits for the next push. One step = one decision of every
advancing row. By default (``fused``) a push is one dispatch: a device ``while_loop`` over the step,
with each decision's wall-clock taken as the push's time divided by its steps; ``fused=False`` dispatches
and reads back every step (exact per-decision times, more host overhead).

A long-form session (``long_form=``:class:`~.longform.LongForm`) runs as long as input arrives, on caches of a
fixed window: the model closes segments as it goes and only the prompt and a recent context are kept (see
:mod:`.longform`).

Before :meth:`finish` the session does not know M, the number of units: the device's ``M`` is a sentinel
larger than any read count. Decisions (and so tokens and phi) do not depend on M while ``n <= M``; only
the *scores* of the M-dependent heads (``batch``: n/(M+1), ``wait-k``: n - min(k+w-1, M+1)) can differ
from the batch decoder's for decisions made before the end was known.
"""

from __future__ import annotations

import dataclasses

from proactive_jax.method.decode import DecodeResult
from proactive_jax.method.heads import HeadSpec
from proactive_jax.errors import SessionError
from proactive_jax.method.longform import LongForm, LongFormBatch, boundary_table, turn_separator
from proactive_jax.method.session_batch import SessionBatch
from proactive_jax.method.shapes import bucket
from proactive_jax.models.config import ModelConfig


class StreamSession:
    """One live stream (a :class:`SessionBatch` of one row).

    ``prompt``, ``end``, ``header``: token-id lists as in ``StreamExample``. ``push(unit)`` returns the
    token ids written in response; ``finish()`` feeds ``end`` and returns the rest; ``tokens`` and ``phi``
    hold everything written so far and the read count at each write; ``decision_seconds`` the wall-clock
    time of every decision. Keyword options as in :class:`SessionBatch`.

    With a Qwen2-Audio ``config`` (and its whole parameter tree) the session is an audio session: push
    raw 16 kHz mono waveform pieces of any length (:meth:`push_audio`; buffered into chunks of
    ``config.chunk`` encoder tokens, each read as one unit once heard) or one chunk's embeddings at a
    time; see :mod:`.audio_session`.
    """

    def __init__(self, config: ModelConfig, params, head: str | HeadSpec, *, prompt, end, header,
                 max_new_tokens: int, eos_ids=None, word_starts=None, long_form: LongForm | None = None,
                 **options):
        if long_form is not None:  # a stream without an end, on a bounded window (see .longform)
            self._batch = LongFormBatch(config, params, head, prompts=[prompt], ends=[end], headers=[header],
                                        max_new_tokens=max_new_tokens, long_form=long_form, eos_ids=eos_ids,
                                        word_starts=word_starts, **options)
            self.tokenizer = None
            return
        self._batch = SessionBatch(config, params, head, prompts=[prompt], ends=[end], headers=[header],
                                   max_new_tokens=max_new_tokens, eos_ids=eos_ids, word_starts=word_starts,
                                   **options)
        self.tokenizer = None

    @classmethod
    def from_tokenizer(cls, config: ModelConfig, params, head: str | HeadSpec, tokenizer, *, prompt_text: str = "",
                       system: str | None = None, max_new_tokens: int = 64, eos_ids=None, word_starts=None,
                       **options) -> "StreamSession":
        """Prompt, end and header rendered from the tokenizer's chat template exactly as offline examples
        are (:func:`proactive_jax.data.render_example`); eos ids and the word-start table from the
        tokenizer unless given. Use :meth:`push_text` to push words."""
        from proactive_jax.data import TextExample, render_example, template_parts, word_start_table
        from proactive_jax.data.render import eos_ids_for

        text_cfg = getattr(config, "text", config)
        if text_cfg is not config:  # audio: the audio chat layout (prompt ends with <|audio_bos|>)
            from proactive_jax.data.render import audio_parts

            parts = audio_parts(tokenizer, prompt_text, "You are a helpful assistant." if system is None else system)
        else:
            ex = render_example(tokenizer, TextExample(task="live", id="live", prompt_text=prompt_text, units=["x"],
                                                       target_text="x"), template_parts(tokenizer, system=system))
            parts = dict(prompt=ex.prompt, end=ex.end, header=ex.header)
        lf = options.get("long_form")
        if lf is not None and lf.boundary_ids is None:  # segments close at sentence ends too
            lf = options["long_form"] = dataclasses.replace(lf, boundary_ids=tuple(boundary_table(tokenizer)))
        if lf is not None and lf.turn_separator is None:  # multi-turn: the chat template between two turns
            options["long_form"] = dataclasses.replace(lf, turn_separator=turn_separator(tokenizer, system))
        s = cls(config, params, head, prompt=parts["prompt"], end=parts["end"], header=parts["header"],
                max_new_tokens=max_new_tokens,
                eos_ids=eos_ids_for(tokenizer, text_cfg) if eos_ids is None else eos_ids,
                word_starts=word_start_table(tokenizer, text_cfg.vocab_size) if word_starts is None else word_starts,
                **options)
        s.tokenizer = tokenizer
        return s

    def push(self, unit) -> list[int]:
        return self._batch.push([unit])[0]

    def push_audio(self, samples, sampling_rate: int = 16000) -> list[int]:
        """Push a waveform piece (mono float in [-1, 1], or int16 PCM; any length) of an audio session;
        returns the tokens written once the chunks it completes were read (often none)."""
        if self._batch.audio is None:
            raise SessionError("push_audio: this is a text session (made with a text model config); push token ids")
        return self._batch.push([samples], sampling_rate=sampling_rate)[0]

    def push_text(self, word: str) -> list[int]:
        """Push one word of text (tokenized on its own, with a leading space after the first unit, as
        offline rendering does); needs a session made by :meth:`from_tokenizer`."""
        if self.tokenizer is None:
            raise SessionError("push_text needs a tokenizer: create the session with StreamSession.from_tokenizer")
        word = word.strip()
        if not word:
            raise SessionError("push_text: the word is empty (nothing was fed; the session is unchanged)")
        text = word if self._batch.units_pushed[0] == 0 else " " + word
        return self.push(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def finish(self) -> list[int]:
        if self._batch.closed[0]:
            raise SessionError("finish: the session is closed (finish() was already called)")
        return self._batch.finish([0])[0]

    def end_turn(self) -> list[int]:
        """Long-form sessions: the user's turn ends; the model answers until end-of-turn, and the turn stays in the
        context (chat layout) of the next turn, which starts with the next push (see :mod:`.longform`)."""
        if not hasattr(self._batch, "end_turn"):
            raise SessionError("end_turn: only long-form sessions hold several turns (create with long_form=)")
        if self._batch.closed[0]:
            raise SessionError("end_turn: the session is closed (finish() was called)")
        return self._batch.end_turn([0])[0]

    def result(self) -> DecodeResult:
        return self._batch.result(0)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True) if self.tokenizer else str(list(ids))

    def tokens_from(self, start: int) -> list[int]:
        """The token ids written from index ``start`` on (cheap on a long stream, unlike :attr:`tokens`)."""
        return self._batch.tokens[0][start:]

    segments = property(lambda self: list(getattr(self._batch, "segments", [[]])[0]),
                        doc="long-form sessions: the last finished segments (:class:`.longform.Segment`)")
    tokens = property(lambda self: list(self._batch.tokens[0]), doc="token ids written so far")
    phi = property(lambda self: list(self._batch.phi[0]), doc="read count at each write")
    done = property(lambda self: self._batch.done[0], doc="the model stopped writing (eos or max_new_tokens)")
    pending_token = property(lambda self: int(self._batch._pending["cand"][0]),
                             doc="the greedy candidate for the next write (given what was read so far)")
    closed = property(lambda self: self._batch.closed[0], doc="finish() was called")
    units_pushed = property(lambda self: self._batch.units_pushed[0])
    decision_seconds = property(lambda self: list(self._batch.records[0]["seconds"]),
                                doc="wall-clock seconds of each decision")
    prefill_seconds = property(lambda self: self._batch.prefill_seconds)
    word_starts = property(lambda self: self._batch.word_starts)
    eos_ids = property(lambda self: self._batch.eos_ids)


def session_decode(config: ModelConfig, params, examples, head: str | HeadSpec, max_new_tokens: int,
                   eos_ids=None, word_starts=None, batch_size: int | None = None, **options) -> list[DecodeResult]:
    """``stream_decode``'s contract through live sessions: examples are pushed unit by unit (a
    :class:`SessionBatch` of ``batch_size`` rows at a time, in lockstep), each finished after its last
    unit. Results carry ``seconds`` (wall-clock per decision) for computation-aware latency."""
    examples = list(examples)
    size = len(examples) if batch_size is None else max(1, min(int(batch_size), len(examples)))
    U = options.pop("unit_capacity", bucket(max(max(len(u) for u in e.units + (e.end,)) for e in examples)))
    S = options.pop("max_source_len", max(e.S for e in examples))
    options.setdefault("prompt_capacity", max(len(e.prompt) for e in examples))
    options.setdefault("header_capacity", max(len(e.header) for e in examples))
    out = []
    for start in range(0, len(examples), size):
        chunk = examples[start:start + size]
        rows = chunk + [chunk[0]] * (size - len(chunk))  # a short last chunk keeps the shapes: idle rows
        sb = SessionBatch(config, params, head, prompts=[e.prompt for e in rows], ends=[e.end for e in rows],
                          headers=[e.header for e in rows], max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                          word_starts=word_starts, unit_capacity=U, max_source_len=S, **options)
        for k in range(max(e.M for e in chunk)):
            sb.push([e.units[k] if k < e.M else None for e in chunk] + [None] * (size - len(chunk)))
            ending = [i for i, e in enumerate(chunk) if e.M == k + 1]
            if ending:
                sb.finish(ending)
        out.extend(sb.result(i) for i in range(len(chunk)))
    return out
