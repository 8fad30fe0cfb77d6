"""Decodes for people: the READ/WRITE interleaving of a :class:`~.decode.DecodeResult` as events and lines
(the decode CLI, the demo's traces), and a quick tau from a decode's own decided scores (the calibration
the evaluation uses is :mod:`.calibration`)."""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Sequence

import numpy as np

from proactive_jax.method.decode import DecodeResult
from proactive_jax.data.example import StreamExample

logger = logging.getLogger(__name__)



class Event(NamedTuple):
    kind: str  # "READ" or "WRITE"
    n: int  # READ: read count after this read (M+1 = the end marker); WRITE: phi of the token
    tokens: tuple  # the unit (or end marker) read, or the one token written
    text: str | None  # detokenized tokens, if a detokenizer was given
    score: float  # the head's statistic at this decision
    forced: bool  # the statistic did not decide
    end: bool = False  # READ of the end-of-source marker (read count M+1)


def interleave(example: StreamExample, result: DecodeResult,
               detokenize: Callable[[Sequence[int]], str] | None = None) -> list[Event]:
    """The decode as a list of READ/WRITE events, in order (from the per-decision record)."""
    events, w = [], 0
    for wr, n, sc, fo in zip(result.writes, result.reads, result.scores, result.forced):
        if wr:
            toks = (int(result.tokens[w]),)
            w += 1
            events.append(Event("WRITE", int(n), toks, detokenize(toks) if detokenize else None, float(sc), bool(fo)))
        else:
            toks = example.units[n] if n < example.M else example.end
            events.append(Event("READ", int(n) + 1, tuple(toks), detokenize(toks) if detokenize else None,
                                float(sc), bool(fo), end=bool(n >= example.M)))
    return events


TRACE_LEGEND = ("READ n: the n-th source unit was read (n = M+1: the end-of-source marker); WRITE n: a token written "
                "with n units read; score: the head's statistic at that decision (e.g. entropy: normalised entropy, "
                "WRITE when <= tau; wait-k: reads still owed); forced: the statistic did not decide (a rule did)")


def format_events(events: Sequence[Event]) -> str:
    """One line per event, e.g. ``READ  3 ' world'`` / ``WRITE 3 ' Welt'``; the end-of-source marker is shown as
    ``[end of source]`` with its tokens' text."""
    lines = []
    for e in events:
        shown = repr(e.text) if e.text is not None else " ".join(map(str, e.tokens))
        if e.end:
            shown = f"[end of source] {shown}"
        lines.append(f"{e.kind:<5} {e.n:>3} {shown}  (score {e.score:.3f}{', forced' if e.forced else ''})")
    return "\n".join(lines)


def format_trace(example: StreamExample, events: Sequence[Event],
                 detokenize: Callable[[Sequence[int]], str] | None = None) -> str:
    """What a person needs to read a decode: the legend, the prompt (the always-visible tokens), then the events."""
    prompt = repr(detokenize(example.prompt)) if detokenize else " ".join(map(str, example.prompt))
    return f"legend: {TRACE_LEGEND}\nprompt: {prompt}\n{format_events(events)}"


def calibrate_tau(results: Sequence[DecodeResult], quantile: float = 0.9) -> float:
    """tau as a quantile of the head's scores at the decisions it actually made (forced ones excluded)."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    s = np.concatenate([r.scores[~r.forced] for r in results]) if results else np.zeros(0)
    if s.size == 0:
        raise ValueError("calibrate_tau: no unforced decisions in the results")
    return float(np.quantile(s, quantile))
