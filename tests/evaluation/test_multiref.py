"""The multi-reference metric of synonym-map (evaluation.quality.multiref) against a brute-force reference:
the best single reference among every output the pattern allows."""
import itertools
import random

import pytest

from proactive_jax.evaluation import quality as Q
from proactive_jax.evaluation import results as R
from proactive_jax.evaluation import study_metrics as SM


def _brute(prediction: str, pattern: str) -> tuple[float, float]:
    words = prediction.split()
    best = (0.0, 0.0)
    for ref in itertools.product(*[p.split("|") for p in pattern.split()]):
        hits = sum(a == b for a, b in zip(words, ref))
        denom = max(len(words), len(ref))
        best = max(best, (hits / denom if denom else 1.0, float(list(ref) == words)))
    return best


def test_multiref_equals_the_best_single_reference():
    rng = random.Random(0)
    vocab = list("abcdefg")
    for _ in range(300):
        pattern = " ".join("|".join(rng.sample(vocab, rng.randint(1, 3))) for _ in range(rng.randint(1, 4)))
        pred = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 5)))
        assert Q.multiref_sentence(pred, pattern) == pytest.approx(_brute(pred, pattern)), (pred, pattern)


def test_multiref_registered_for_synonym_map():
    assert Q.quality("multiref", ["a x", "b"], [["a|b x|y"], ["a|b x|y"]]) == {"score": 75.0, "exact": 50.0}
    assert R.task_quality("synonym-map") == ("multiref", "score", "mref", True)
    assert R.task_quality("ledger")[0] == "squad" and R.task_quality("verb-final")[0] == "bleu"
    assert R.task_quality("x", "multiref")[1] == "score"
    assert SM.multiref is Q.multiref
    with pytest.raises(ValueError, match="0 predictions"):
        Q.multiref([], [])
