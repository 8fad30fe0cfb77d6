"""Quality metrics (design/method.md section 7), in percent: BLEU (sacrebleu), SQuAD EM/F1, multiple-choice
accuracy, ROUGE, WER. ``QUALITY_METRICS`` / :func:`quality` give them by name. Prediction and reference lists of
different lengths raise ``ValueError`` naming both lengths.
"""
from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter
from typing import Callable, Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Quality
# ----------------------------------------------------------------------------------------------------

def _check_lengths(preds, refs, pred_name: str = "predictions", ref_name: str = "references"):
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} {pred_name} but {len(refs)} {ref_name}; they must match")
    if len(preds) == 0:
        raise ValueError(f"got 0 {pred_name}: nothing to score")


def _as_list(x) -> list:
    return [x] if isinstance(x, str) else list(x)


def bleu(hypotheses: Sequence[str], references_list: Sequence) -> dict:
    """sacrebleu corpus BLEU, default settings (13a tokenizer, exp smoothing, mixed case).

    ``references_list[i]`` is the reference (a string) or the references (a list of strings, any number
    per hypothesis) of hypothesis i. Returns ``{"bleu": score (0..100), "signature": sacrebleu's signature
    string}``.
    """
    from sacrebleu.metrics import BLEU

    hypotheses = list(hypotheses)
    _check_lengths(hypotheses, references_list, "hypotheses", "references")
    per_hyp = [_as_list(r) for r in references_list]
    if any(len(r) == 0 for r in per_hyp):
        raise ValueError("every hypothesis needs at least one reference")
    n_refs = max(len(r) for r in per_hyp)
    streams = [[r[k] if k < len(r) else None for r in per_hyp] for k in range(n_refs)]
    metric = BLEU()
    score = metric.corpus_score(hypotheses, streams)
    return {"bleu": float(score.score), "signature": str(metric.get_signature())}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_squad_answer(text: str) -> str:
    """Official SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation, drop articles a/an/the,
    collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _squad_f1(pred_tokens: list, gold_tokens: list) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(prediction: str, gold_answers) -> tuple:
    """One example, SQuAD v1.1: ``(exact_match, f1)``, each the max over the gold answers, in [0, 1].

    Token F1 over the normalised answers' whitespace tokens (bag overlap); as in v1.1, an answer that
    normalises to nothing has F1 0 (but EM 1 against a gold that also normalises to nothing).
    ``gold_answers``: a string or a non-empty list of strings.
    """
    golds = _as_list(gold_answers)
    if not golds:
        raise ValueError("squad_em_f1 needs at least one gold answer")
    pred = normalize_squad_answer(prediction)
    em = max(float(pred == normalize_squad_answer(g)) for g in golds)
    f1 = max(_squad_f1(pred.split(), normalize_squad_answer(g).split()) for g in golds)
    return em, f1


def squad_scores(predictions: Sequence[str], golds: Sequence) -> dict:
    """Corpus SQuAD v1.1: ``{"exact_match", "f1"}`` = 100 x the mean over examples of :func:`squad_em_f1`."""
    _check_lengths(predictions, golds, "predictions", "gold answer lists")
    scores = np.asarray([squad_em_f1(p, g) for p, g in zip(predictions, golds)], dtype=np.float64)
    return {"exact_match": float(100 * scores[:, 0].mean()), "f1": float(100 * scores[:, 1].mean())}


def parse_choice(generation, n_options: int = 4):
    """The option letter (upper case, among the first ``n_options`` letters) a generation chooses, or None.

    Tried in order, the first hit wins:
    1. the whole answer is one letter, optionally bracketed / followed by punctuation: ``"B"``, ``"b."``,
       ``"(d)"``, ``"[C]"``, ``"B)"``;
    2. an answer that starts with an option marker: ``"B) Paris"``, ``"C. the dog"``, ``"(d) ..."``,
       ``"d) ..."`` (a lower-case letter only with a bracket, so "a cat ..." is no answer);
    3. after "answer"/"option"/"choice" (optionally "is", ":", "would be", ...): ``"The answer is C."``,
       ``"Answer: (b)"`` (lower case only when bracketed or followed by punctuation / the end);
    4. the first bracketed letter anywhere: ``"... so (C) is right"``;
    5. the first standalone upper-case letter, except "A" followed by a lower-case word (the article, as in
       ``"A cat"``): ``"I pick C"``, ``"I think B is right"``.
    """
    if not isinstance(n_options, int) or not 1 <= n_options <= 26:
        raise ValueError(f"n_options must be an int in 1..26, got {n_options!r}")
    if generation is None:
        return None
    text = unicodedata.normalize("NFKC", str(generation)).strip()
    if not text:
        return None
    upper = string.ascii_uppercase[:n_options]
    opt = f"[{upper}{upper.lower()}]"
    cap = f"[{upper}]"

    patterns = [
        rf"^[\(\[\{{<\*\"']*({opt})[\)\]\}}>\*\"']*[\.\:,;!]?$",
        rf"^[\*\"']*(?:\(|\[)({opt})(?:\)|\])",
        rf"^[\*\"']*({opt})\)",
        rf"^[\*\"']*({cap})(?:[\.\:\-]|\s*$|\s*\n|\s+-)",
        rf"(?i:answer|option|choice)\W{{0,3}}(?:(?i:is|would be|will be|should be)\W{{0,3}})?"
        rf"(?:(?:\(|\[)({opt})|({cap})\b|({opt})(?=[\)\]\.\:,;!]|\s*$))",
        rf"(?:\(|\[)({opt})(?:\)|\])",
    ]
    # Last resort: a standalone capital letter; "A" followed by a lower-case word is the article.
    rest = "".join(ch for ch in upper if ch != "A")
    alts = ["(A)(?![\\w'])(?!\\s+[a-z])"] if "A" in upper else []
    alts += [f"([{rest}])(?![\\w'])"] if rest else []
    patterns.append(rf"(?<![\w'])(?:{'|'.join(alts)})")
    for pat in patterns:
        m = re.search(pat, text)
        if m:
            letter = next(g for g in m.groups() if g)
            return letter.upper()
    return None


def accuracy(preds: Sequence, golds: Sequence) -> float:
    """Percent of predictions equal to the gold label. Strings compare after ``strip().upper()`` (so option
    letters are case-insensitive); ``None`` (unparsable) never matches."""
    _check_lengths(preds, golds, "predictions", "gold labels")

    def canon(x):
        return x.strip().upper() if isinstance(x, str) else x

    hits = [p is not None and canon(p) == canon(g) for p, g in zip(preds, golds)]
    return float(100 * np.mean(hits))


def choice_accuracy(generations: Sequence[str], golds: Sequence[str], n_options: int = 4) -> dict:
    """Multiple choice from raw generations: :func:`parse_choice` then :func:`accuracy` (percent).
    Returns ``{"accuracy", "unparsed"}`` (``unparsed``: percent of generations with no option letter)."""
    _check_lengths(generations, golds, "generations", "gold labels")
    preds = [parse_choice(g, n_options) for g in generations]
    return {"accuracy": accuracy(preds, golds),
            "unparsed": float(100 * np.mean([p is None for p in preds]))}


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict:
    """ROUGE-1/2/L F-measure (``rouge_score``, ``use_stemmer=True``, its default tokenizer), mean over
    pairs, in percent: ``{"rouge1", "rouge2", "rougeL"}``."""
    from rouge_score import rouge_scorer

    _check_lengths(hyps, refs, "hypotheses", "references")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]  # score(target, prediction)
    return {k: float(100 * np.mean([s[k].fmeasure for s in scores])) for k in keys}


_APOSTROPHES = re.compile(r"['\u2019\u2018`]")


def normalize_wer_text(text: str) -> str:
    """WER normalisation: lowercase, apostrophes deleted ("don't" -> "dont"), every other Unicode
    punctuation character replaced by a space, whitespace collapsed."""
    text = _APOSTROPHES.sub("", str(text).lower())
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


WER_NORMALISERS = ("basic", "whisper")


def normalize_transcript(text: str, normaliser: str = "basic") -> str:
    """``basic``: :func:`normalize_wer_text` (the project's WER normalisation); ``whisper``: transformers' Whisper
    English normaliser (spellings, numbers, contractions), as the Qwen2-Audio evaluation uses it."""
    if normaliser == "basic":
        return normalize_wer_text(text)
    if normaliser == "whisper":
        return _whisper_normaliser()(text)
    raise ValueError(f"WER normalisation {normaliser!r}: expected one of {WER_NORMALISERS}")


@functools.lru_cache(maxsize=1)
def _whisper_normaliser():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})  # the spelling map is optional; without it only British->US is skipped


def wer(hyps: Sequence[str], refs: Sequence[str], normaliser: str = "basic") -> float:
    """Corpus word error rate in percent (jiwer: total edits / total reference words) after the named
    normalisation (:func:`normalize_transcript`) on both sides; pairs whose reference normalises to nothing
    are left out (no words to err on)."""
    import jiwer

    _check_lengths(hyps, refs, "hypotheses", "references")
    r = [normalize_transcript(x, normaliser) for x in refs]
    h = [normalize_transcript(x, normaliser) for x in hyps]
    keep = [i for i, x in enumerate(r) if x]
    return float(100 * jiwer.wer([r[i] for i in keep], [h[i] for i in keep]))


def multiref_sentence(prediction: str, pattern: str) -> tuple[float, float]:
    """``(score, exact)`` of one prediction against a pattern reference ``"a|b c ..."`` (one set of valid words
    per position, e.g. synonyms): score = positions whose word is in that position's set / max(prediction
    length, positions); exact = 1 when every position matches and the lengths agree. Equal to the best
    position-match rate over every single reference the pattern spells out (tested by enumerating them)."""
    sets = [set(p.split("|")) for p in pattern.split()]
    words = prediction.split()
    hits = sum(w in s for w, s in zip(words, sets))
    denom = max(len(words), len(sets))
    return (hits / denom if denom else 1.0), float(hits == len(sets) == len(words))


def multiref(predictions: Sequence[str], references: Sequence) -> dict:
    """Corpus multiref: ``{"score", "exact"}`` in percent, the mean over examples of :func:`multiref_sentence`
    (the first reference of each example is its pattern)."""
    _check_lengths(predictions, references)
    s = [multiref_sentence(p, _first(r)) for p, r in zip(predictions, references)]
    return {"score": 100.0 * sum(x[0] for x in s) / len(s), "exact": 100.0 * sum(x[1] for x in s) / len(s)}


QUALITY_METRICS: dict[str, Callable[[Sequence, Sequence], dict]] = {
    "multiref": multiref,
    "bleu": bleu,
    "squad": squad_scores,
    "choice": choice_accuracy,
    "accuracy": lambda preds, golds: {"accuracy": accuracy(preds, golds)},
    "rouge": rouge,
    "wer": lambda hyps, refs: {"wer": wer(hyps, refs)},
    "wer-whisper": lambda hyps, refs: {"wer": wer(hyps, [_first(r) for r in refs], "whisper"), "normaliser": "whisper"},
}


def _first(ref):
    return ref[0] if isinstance(ref, (list, tuple)) else ref


def quality(name: str, preds: Sequence, refs: Sequence) -> dict:
    """Score ``preds`` against ``refs`` with the metric registered as ``name`` in ``QUALITY_METRICS``
    (bleu, squad, choice, accuracy, rouge, wer); returns that metric's dict. Unknown name: ValueError."""
    if name not in QUALITY_METRICS:
        raise ValueError(f"unknown quality metric {name!r}; known: {', '.join(sorted(QUALITY_METRICS))}")
    return QUALITY_METRICS[name](preds, refs)
