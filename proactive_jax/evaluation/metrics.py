"""Latency metrics, and the public metrics API (design/method.md section 7). Small pure functions, numpy only.

Latency
-------
Read counts ``phi(j)`` (section 3) run from 0 to M+1, with M+1 meaning "the end marker was read too".
Delays are read counts in content units: ``d_j = min(phi(j), M)``.

* ``rco``/``ail``: the paper's read-context ratio and average ideal lag, at target-token granularity.
* ``al``/``laal``/``dal``/``ap``: exactly SimulEval 1.1.4's sentence-level scorers (``ALScorer``,
  ``LAALScorer``, ``DALScorer``, ``APScorer`` in ``simuleval/evaluator/scorers/latency_scorer.py``, checked
  against SimulEval itself by ``tests/fixtures/simuleval_latency.json``). Here ``delays[i]`` is the number
  of source units read when hypothesis unit i+1 was written, ``|Y*| = len(delays)`` the hypothesis length,
  ``|Y| = reference_length`` (``None``: the hypothesis length, like SimulEval without a reference) and
  ``|X| = source_length``.
* ``latency_report`` gives all of them for one sentence, at token granularity (``*_token``) and word
  granularity (``*_word``); ``aggregate_latency`` averages reports over sentences as SimulEval does.
* ``ca_latency_report``: the computation-aware variants (SimulEval's ``*_CA``, keys ``*_ca``): each delay
  plus the wall-clock compute time spent up to that write, converted to source units (see its doc).

Empty hypothesis: every sentence-level latency returns ``nan`` (SimulEval's ``compute`` would crash, and its
corpus score skips such instances); ``aggregate_latency`` skips ``nan`` the same way, so corpus means equal
SimulEval's.

Quality
-------
The quality metrics (BLEU, EM/F1, accuracy, ROUGE, WER; ``QUALITY_METRICS`` / ``quality``) live in
:mod:`proactive_jax.evaluation.quality` and are re-exported here: ``proactive_jax.metrics`` is every metric.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from proactive_jax.evaluation.quality import (QUALITY_METRICS, WER_NORMALISERS, accuracy, bleu, choice_accuracy,
                                             normalize_squad_answer, normalize_transcript, normalize_wer_text,
                                             parse_choice, quality, rouge, squad_em_f1, squad_scores, wer)

__all__ = [
    "al", "laal", "dal", "ap", "rco", "ail", "AIL_IDEALS", "word_delays", "latency_report",
    "aggregate_latency", "ca_delays", "ca_latency_report", "bleu", "normalize_squad_answer", "squad_em_f1",
    "squad_scores", "parse_choice",
    "accuracy", "choice_accuracy", "rouge", "normalize_wer_text", "normalize_transcript", "WER_NORMALISERS", "wer",
    "QUALITY_METRICS", "quality",
]

NAN = float("nan")


# ----------------------------------------------------------------------------------------------------
# Sentence-level latency: SimulEval 1.1.4
# ----------------------------------------------------------------------------------------------------

def _delays(delays, name: str = "delays") -> np.ndarray:
    d = np.asarray(delays, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} must be finite")
    return d


def _positive(value, name: str) -> float:
    if value is None or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _target_length(reference_length, hyp_length: int) -> float:
    if reference_length is None:
        return float(hyp_length)
    return _positive(reference_length, "reference_length")


def _lagging(d: np.ndarray, src: float, tgt: float) -> float:
    """(1/tau) sum_{i<=tau} (d_i - (i-1) |X|/tgt), tau = first i with d_i >= |X| (else |Y*|)."""
    reached = np.flatnonzero(d >= src)
    tau = int(reached[0]) + 1 if reached.size else d.size
    return float(np.mean(d[:tau] - np.arange(tau) * (src / tgt)))


def al(delays, source_length, reference_length=None) -> float:
    """Average Lagging, SimulEval 1.1.4 ``ALScorer`` (STACL).

    ``AL = (1/tau) sum_{i=1..tau} (d_i - (i-1) / gamma)``, ``gamma = |Y| / |X|`` with ``|Y|`` the
    reference length (``None``: hypothesis length) and ``tau`` the first (1-based) i with
    ``d_i >= |X|`` (``>=``, not ``>``), or ``|Y*|`` if no delay reaches the source length. When the first
    delay is at or beyond the source length, AL is that first delay itself (tau = 1; SimulEval's explicit
    ``delays[0] > source_length`` early return gives the same value). AL may be negative (writing ahead of
    the diagonal). Empty hypothesis: ``nan``.
    """
    d = _delays(delays)
    src = _positive(source_length, "source_length")
    if d.size == 0:
        return NAN
    return _lagging(d, src, _target_length(reference_length, d.size))


def laal(delays, source_length, reference_length=None) -> float:
    """Length-Adaptive Average Lagging, SimulEval 1.1.4 ``LAALScorer``.

    AL (same cut-off ``tau``: first ``d_i >= |X|``) with ``gamma = max(|Y*|, |Y|) / |X|``: the longer of
    hypothesis and reference, so over-generation is not rewarded. ``reference_length=None``: hypothesis
    length (then LAAL == AL). Empty hypothesis: ``nan``.
    """
    d = _delays(delays)
    src = _positive(source_length, "source_length")
    if d.size == 0:
        return NAN
    return _lagging(d, src, max(float(d.size), _target_length(reference_length, d.size)))


def dal(delays, source_length) -> float:
    """Differentiable Average Lagging, SimulEval 1.1.4 ``DALScorer`` (Arivazhagan et al. 2019).

    ``g'_1 = d_1``, ``g'_i = max(d_i, g'_{i-1} + 1/gamma)``, ``DAL = (1/|Y*|) sum_i (g'_i - (i-1)/gamma)``
    with ``gamma = |Y*| / |X|``: always the HYPOTHESIS length (SimulEval ignores the reference here), no
    cut-off. Computed in closed form: ``g'_i - (i-1)/gamma = max_{k<=i} (d_k - (k-1)/gamma)``.
    Empty hypothesis: ``nan``.
    """
    d = _delays(delays)
    src = _positive(source_length, "source_length")
    if d.size == 0:
        return NAN
    lag = d - np.arange(d.size) * (src / d.size)
    return float(np.mean(np.maximum.accumulate(lag)))


def ap(delays, source_length, reference_length=None) -> float:
    """Average Proportion, SimulEval 1.1.4 ``APScorer`` (Cho & Esipova 2016).

    ``AP = sum_i d_i / (|X| * |Y|)`` with ``|Y|`` the reference length (``None``: hypothesis length), so
    with a reference AP can exceed 1 (hypothesis longer than the reference). Empty hypothesis: ``nan``.
    """
    d = _delays(delays)
    src = _positive(source_length, "source_length")
    if d.size == 0:
        return NAN
    return float(np.sum(d) / (src * _target_length(reference_length, d.size)))


# ----------------------------------------------------------------------------------------------------
# The paper's RCO / AIL on read counts phi
# ----------------------------------------------------------------------------------------------------

AIL_IDEALS = ("diagonal", "diagonal-shifted")


def _phi(phi) -> np.ndarray:
    p = _delays(phi, "phi")
    if np.any(p < 0):
        raise ValueError("phi must be >= 0")
    return p


def _source_units(source_length) -> float:
    return _positive(source_length, "source_length (M)")


def rco(phi, source_length) -> float:
    """Read-context ratio: ``mean_j min(phi(j), M) / M`` over the target tokens (batch decoding = 1.0).

    ``phi`` read counts (0..M+1, non-decreasing in practice, not required), ``source_length`` = M content
    units. Empty hypothesis: ``nan``.
    """
    p = _phi(phi)
    m = _source_units(source_length)
    if p.size == 0:
        return NAN
    return float(np.mean(np.minimum(p, m)) / m)


def ail(phi, source_length, ideal: str = "diagonal") -> float:
    """Average ideal lag: ``mean_j (d_j - phi_ideal(j))``, ``d_j = min(phi(j), M)``, j = 1..L.

    ``ideal="diagonal"`` (default): ``phi_ideal(j) = j * M / L`` (the ideal reader has read token j's
    proportional share of the source when writing it); ``ideal="diagonal-shifted"``:
    ``phi_ideal(j) = (j - 1) * M / L`` (the first token is ideally written before reading anything).
    Batch decoding (``phi = M+1``) gives ``M/2 - M/(2L)`` resp. ``M/2 + M/(2L)``. Empty: ``nan``.
    """
    if ideal not in AIL_IDEALS:
        raise ValueError(f"unknown AIL ideal {ideal!r}; known: {', '.join(AIL_IDEALS)}")
    p = _phi(phi)
    m = _source_units(source_length)
    if p.size == 0:
        return NAN
    j = np.arange(1, p.size + 1, dtype=np.float64)
    if ideal == "diagonal-shifted":
        j = j - 1.0
    return float(np.mean(np.minimum(p, m) - j * (m / p.size)))


# ----------------------------------------------------------------------------------------------------
# Word-level delays and the per-sentence report
# ----------------------------------------------------------------------------------------------------

def word_delays(phi, word_starts_of_tokens, source_length=None) -> np.ndarray:
    """Delay of each target word = ``phi`` at the word's LAST token (when the word is complete).

    ``word_starts_of_tokens[t]`` is true when token t starts a new word (method.md section 5: its text
    starts with whitespace); the first token always starts word 1 whatever its flag. Lengths must match.
    With ``source_length`` = M the delays are clipped to M (``d = min(phi, M)``); otherwise raw ``phi``.
    Returns a float array with one entry per word (empty for an empty hypothesis).
    """
    p = _phi(phi)
    starts = np.asarray(word_starts_of_tokens, dtype=bool).reshape(-1)
    if starts.size != p.size:
        raise ValueError(f"word_starts_of_tokens has {starts.size} entries but phi has {p.size}")
    if p.size == 0:
        return p
    starts = starts.copy()
    starts[0] = True
    last = np.append(np.flatnonzero(starts[1:]), p.size - 1)  # token before each later start, and the end
    out = p[last]
    if source_length is not None:
        out = np.minimum(out, _source_units(source_length))
    return out


def latency_report(phi, source_length, token_word_starts=None, reference_length=None, *,
                   reference_token_length=None, ideal: str = "diagonal") -> dict:
    """All latency metrics of one sentence, as a flat ``{name: float}`` dict.

    ``phi``: read counts of all L predicted target tokens (the paper's L, end-of-turn token included);
    ``source_length`` = M content units; delays ``d = min(phi, M)``.
    Keys: ``rco``, ``ail`` (token level, ``ideal`` as in :func:`ail`); ``al_token``, ``laal_token``,
    ``dal_token``, ``ap_token`` (SimulEval formulas on token delays, reference length
    ``reference_token_length``, default: hypothesis token count); and, when ``token_word_starts`` is given,
    ``al_word``, ``laal_word``, ``dal_word``, ``ap_word`` on :func:`word_delays` (clipped to M) with
    ``reference_length`` in words (default: hypothesis word count).
    ``token_word_starts`` may be SHORTER than ``phi``: only its first ``len(token_word_starts)`` tokens form
    words, so passing flags for the text tokens only leaves trailing special tokens (the end-of-turn token)
    out of the word-level metrics. Empty hypothesis: every value ``nan``.
    """
    p = _phi(phi)
    m = _source_units(source_length)
    d = np.minimum(p, m)
    out = {
        "rco": rco(p, m),
        "ail": ail(p, m, ideal),
        "al_token": al(d, m, reference_token_length),
        "laal_token": laal(d, m, reference_token_length),
        "dal_token": dal(d, m),
        "ap_token": ap(d, m, reference_token_length),
    }
    if token_word_starts is not None:
        starts = np.asarray(token_word_starts, dtype=bool).reshape(-1)
        if starts.size > p.size:
            raise ValueError(f"token_word_starts has {starts.size} entries but phi has only {p.size}")
        w = word_delays(p[: starts.size], starts, m)
        out.update({
            "al_word": al(w, m, reference_length),
            "laal_word": laal(w, m, reference_length),
            "dal_word": dal(w, m),
            "ap_word": ap(w, m, reference_length),
        })
    return out


def aggregate_latency(reports: Sequence[Mapping[str, float]]) -> dict:
    """Corpus latency: per key, the mean over sentences (as SimulEval's scorers do).

    ``nan`` entries (empty hypotheses) are skipped, like SimulEval skips instances without delays; a key
    that is ``nan`` in every report stays ``nan``. All reports must have the same keys.
    """
    reports = list(reports)
    if not reports:
        raise ValueError("aggregate_latency needs at least one report")
    keys = list(reports[0])
    for i, r in enumerate(reports):
        if set(r) != set(keys):
            raise ValueError(f"report {i} has keys {sorted(r)}, report 0 has {sorted(keys)}")
    out = {}
    for k in keys:
        vals = np.asarray([float(r[k]) for r in reports], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(np.mean(vals)) if vals.size else NAN
    return out


def ca_delays(delays, elapsed, seconds_per_unit: float = 1.0) -> np.ndarray:
    """Computation-aware delays: ``d_j + elapsed_j / seconds_per_unit`` (source units).

    ``elapsed_j``: wall-clock seconds of computation from the start of the stream up to the write of item
    j (cumulative: every decision delays all later ones). SimulEval's computation-aware timestamps (speech
    input) are "source time read + wall time since the start"; here the source time is in units, so the
    compute time is converted with ``seconds_per_unit`` (the source's pace: 1 s for a one-second audio
    chunk; ours for text: a configured words-per-second rate)."""
    d = _delays(delays)
    e = _delays(elapsed, "elapsed")
    if e.shape != d.shape:
        raise ValueError(f"elapsed has {e.size} entries but delays has {d.size}")
    if np.any(e < 0):
        raise ValueError("elapsed must be >= 0 seconds")
    return d + e / _positive(seconds_per_unit, "seconds_per_unit")


def ca_latency_report(phi, elapsed, source_length, token_word_starts=None, reference_length=None, *,
                      reference_token_length=None, seconds_per_unit: float = 1.0) -> dict:
    """``al/laal/dal/ap`` on computation-aware delays (:func:`ca_delays`), keys ``*_token_ca`` and, with
    ``token_word_starts``, ``*_word_ca`` (a word's time = its last token's, like :func:`word_delays`).
    ``elapsed``: seconds per target token (same length as ``phi``). Same conventions as
    :func:`latency_report` otherwise; empty hypothesis: ``nan``."""
    p = _phi(phi)
    e = _delays(elapsed, "elapsed")
    if e.size != p.size:
        raise ValueError(f"elapsed has {e.size} entries but phi has {p.size}")
    m = _source_units(source_length)
    d = ca_delays(np.minimum(p, m), e, seconds_per_unit)
    out = {"al_token_ca": al(d, m, reference_token_length), "laal_token_ca": laal(d, m, reference_token_length),
           "dal_token_ca": dal(d, m), "ap_token_ca": ap(d, m, reference_token_length)}
    if token_word_starts is not None:
        starts = np.asarray(token_word_starts, dtype=bool).reshape(-1)
        if starts.size > p.size:
            raise ValueError(f"token_word_starts has {starts.size} entries but phi has only {p.size}")
        w = ca_delays(word_delays(p[: starts.size], starts, m), word_delays(e[: starts.size], starts),
                      seconds_per_unit)
        out.update({"al_word_ca": al(w, m, reference_length), "laal_word_ca": laal(w, m, reference_length),
                    "dal_word_ca": dal(w, m), "ap_word_ca": ap(w, m, reference_length)})
    return out
