"""Generate tests/fixtures/simuleval_latency.json with SimulEval 1.1.4's own latency scorers.

SimulEval pins old tqdm/bitarray versions, so it is NOT a project dependency: run this script inside a
separate virtualenv. Exact regeneration command (from the repository root):

    python3 -m venv /tmp/simuleval-venv \
      && /tmp/simuleval-venv/bin/pip install simuleval==1.1.4 \
      && /tmp/simuleval-venv/bin/python tests/simuleval_reference.py

The output is deterministic (fixed seed, Python's ``random`` only). Every trace is scored by SimulEval's
``ALScorer``, ``LAALScorer``, ``DALScorer`` and ``APScorer`` (``.compute`` on a real
``TextToTextInstance`` with ``--eval-latency-unit word``, default ``use_ref_len=True``), so the reference
length goes through SimulEval's own ``reference_length`` property (``len(reference.split(" "))``). Traces
with ``reference_length: null`` have ``instance.reference = None``: SimulEval then uses the hypothesis
length, exactly like ``reference_length=None`` in ``proactive_jax.evaluation.metrics``. A corpus-level block records
each scorer's ``__call__`` (mean over instances, instances with empty delays skipped).

This file never imports proactive_jax and proactive_jax never imports simuleval.
"""
from __future__ import annotations

import json
import logging
import random
import sys
import warnings
from argparse import Namespace
from pathlib import Path

SEED = 20240611
OUT = Path(__file__).resolve().parent / "fixtures" / "simuleval_latency.json"
METRICS = ("AL", "LAAL", "DAL", "AP")


def _imports():
    warnings.filterwarnings("ignore")  # pydub complains about ffmpeg on import
    logging.disable(logging.WARNING)  # "Instance i has no delay information. Skipped"
    import simuleval
    from importlib.metadata import version

    from simuleval.evaluator.instance import TextToTextInstance
    from simuleval.evaluator.scorers.latency_scorer import ALScorer, APScorer, DALScorer, LAALScorer

    ver = version("simuleval")
    if ver != "1.1.4":
        sys.exit(f"need simuleval==1.1.4, found {ver} ({simuleval.__file__})")
    scorers = {"AL": ALScorer(), "LAAL": LAALScorer(), "DAL": DALScorer(), "AP": APScorer()}
    return ver, TextToTextInstance, scorers


def make_instance(cls, index, delays, source_length, reference_length):
    ins = cls(index, None, Namespace(eval_latency_unit="word"))
    ins.source = [f"s{i}" for i in range(source_length)]
    ins.reference = None if reference_length is None else " ".join(f"r{i}" for i in range(reference_length))
    ins.delays = list(delays)
    ins.prediction_list = [f"h{i}" for i in range(len(delays))]
    return ins


def monotone(rng, n, lo, hi):
    return sorted(rng.randint(lo, hi) for _ in range(n))


def traces(rng):
    """(delays, source_length, reference_length or None, tag)."""
    out = []
    # Hand-picked edge cases.
    out += [
        ([1], 1, None, "len1_src1"),
        ([1], 1, 1, "len1_src1_ref1"),
        ([0], 5, None, "len1_zero_delay"),
        ([3], 5, 7, "len1_ref_longer"),
        ([5], 5, None, "len1_at_src"),
        ([7], 5, 3, "len1_beyond_src"),
        ([5, 5, 5, 5], 5, None, "all_at_src"),
        ([5, 5, 5, 5], 5, 9, "all_at_src_ref_longer"),
        ([5, 5, 5, 5], 5, 2, "all_at_src_ref_shorter"),
        ([6, 6, 6], 5, None, "all_beyond_src"),
        ([6, 6, 6], 5, 4, "first_beyond_src_ref"),
        ([5, 6, 7], 5, 3, "first_at_src_then_beyond"),
        ([0, 0, 0, 0, 0], 4, None, "all_zero"),
        ([0, 0, 0, 0, 0], 4, 8, "all_zero_ref_longer"),
        ([1, 2, 3, 4, 5], 5, None, "diagonal"),
        ([1, 2, 3, 4, 5], 5, 5, "diagonal_ref_equal"),
        ([1, 2, 3, 4, 5, 5, 5, 5, 5, 5], 5, 5, "hyp_longer_than_ref"),
        ([1, 2, 3], 5, 8, "hyp_shorter_than_ref"),
        ([1, 2, 3, 4, 6], 5, None, "last_beyond_src"),
        ([2, 3, 4, 6, 6], 5, 5, "cutoff_at_beyond"),
        ([3, 4, 5, 6], 6, None, "wait3"),
        ([3, 4, 5, 6, 6, 6, 6], 6, 7, "wait3_tail"),
        ([1, 1, 1, 1, 1, 1, 1, 1], 2, 3, "over_generation"),
        ([2, 1, 3, 2], 4, None, "non_monotone"),
        ([2, 1, 3, 2], 4, 6, "non_monotone_ref"),
        ([1], 40, 30, "one_word_long_source"),
        ([40] * 30, 40, 30, "batch_like"),
        ([0.5, 1.25, 2.0, 3.75], 4, None, "fractional"),
        ([0.5, 1.25, 2.0, 3.75], 4, 3, "fractional_ref"),
    ]
    # Random traces: monotone delays in [0, M] (the phi-derived case) or [0, M+2] (beyond the source),
    # hypothesis length 1..50, reference length None or 1..60 (shorter and longer than the hypothesis).
    for i in range(360):
        m = rng.randint(1, 40)
        n = rng.randint(1, 50)
        hi = m if i % 3 else m + 2
        lo = 0 if i % 5 else rng.randint(0, m + 1)  # sometimes the first delay is at/beyond M
        d = monotone(rng, n, lo, max(lo, hi))
        if i % 7 == 0:
            rng.shuffle(d)  # non-monotone: the formulas are defined for any sequence
        r = None if i % 4 == 0 else rng.randint(1, 60)
        out.append((d, m, r, f"random{i}"))
    return out


def main():
    ver, cls, scorers = _imports()
    rng = random.Random(SEED)
    cases = []
    instances = {}
    for idx, (d, m, r, tag) in enumerate(traces(rng)):
        ins = make_instance(cls, idx, d, m, r)
        scores = {k: float(s.compute(ins)) for k, s in scorers.items()}
        cases.append({"tag": tag, "delays": d, "source_length": m, "reference_length": r, **scores})
        instances[idx] = ins
    # Corpus means via each scorer's __call__, with two empty-hypothesis instances that SimulEval skips.
    n = len(instances)
    instances[n] = make_instance(cls, n, [], 5, 4)
    instances[n + 1] = make_instance(cls, n + 1, [], 3, None)
    corpus = {k: float(s(instances)) for k, s in scorers.items()}
    payload = {
        "generator": "tests/simuleval_reference.py",
        "simuleval_version": ver,
        "seed": SEED,
        "note": "per-case scores from <Scorer>.compute; 'corpus' = <Scorer>.__call__ over all cases plus "
                "two empty-delay instances (skipped by SimulEval)",
        "corpus": corpus,
        "corpus_num_empty": 2,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One case per line: small, and diffable when regenerated.
    head = json.dumps({k: v for k, v in payload.items() if k != "cases"}, indent=1)[:-2]
    body = ",\n".join("  " + json.dumps(c, separators=(",", ":")) for c in cases)
    OUT.write_text(head + ',\n "cases": [\n' + body + "\n ]\n}\n")
    json.loads(OUT.read_text())  # well-formed
    print(f"wrote {len(cases)} cases to {OUT} ({OUT.stat().st_size} bytes), corpus={corpus}")


if __name__ == "__main__":
    main()
