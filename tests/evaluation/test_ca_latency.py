"""Computation-aware latency: the *_ca metrics (SimulEval's formulas on compute-shifted delays) and the
eval path that measures them through live sessions."""
import numpy as np
import pytest

from proactive_jax.data import load_tokenizer, make_task, render_example, template_parts, word_start_table
from proactive_jax.evaluation import sweep as E, metrics as M
from proactive_jax.method.session import session_decode
from proactive_jax.models.qwen import init_params
from tests.helpers import tiny_qwen3


def test_ca_report_reduces_to_ideal_and_matches_simuleval():
    phi = np.array([1, 1, 2, 4, 5, 5])
    starts = [True, False, True, True, True, False]
    elapsed = np.array([0.1, 0.15, 0.3, 0.5, 0.6, 0.9])  # cumulative seconds at each write
    ideal = M.latency_report(phi, 4, starts, 5)
    zero = M.ca_latency_report(phi, np.zeros(6), 4, starts, 5)
    assert {k[:-3]: v for k, v in zero.items()} == {k: ideal[k] for k in ideal if k + "_ca" in zero}
    ca = M.ca_latency_report(phi, elapsed, 4, starts, 5, seconds_per_unit=0.5)
    assert all(ca[k + "_ca"] > ideal[k] for k in ("al_word", "laal_word", "al_token", "ap_word"))
    # word delays: last token of each word; + its elapsed / 0.5 s per unit
    w = np.array([1, 2, 4, 4]) + np.array([0.15, 0.3, 0.5, 0.9]) / 0.5
    assert ca["al_word_ca"] == pytest.approx(M.al(w, 4, 5), abs=1e-12)
    with pytest.raises(ValueError, match="elapsed has 2 entries"):
        M.ca_latency_report(phi, [0.1, 0.2], 4)
    with pytest.raises(ValueError, match="seconds_per_unit"):
        M.ca_delays([1.0], [0.1], 0)
    simuleval = pytest.importorskip("simuleval")  # noqa: F841
    import json

    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import ALScorer, LAALScorer
    ins = {0: LogInstance(json.dumps({"index": 0, "elapsed": w.tolist(), "delays": [1, 2, 4, 4],
                                      "reference": "a b c d e", "source_length": 4, "prediction": "w x y z"}))}
    assert ALScorer(computation_aware=True)(ins) == pytest.approx(ca["al_word_ca"], abs=1e-12)
    assert LAALScorer(computation_aware=True)(ins) == pytest.approx(ca["laal_word_ca"], abs=1e-12)


def test_eval_reports_ca_next_to_ideal(tmp_path):
    tok = load_tokenizer()
    cfg = tiny_qwen3(vocab_size=len(tok))
    items = [E.EvalItem(t.id, render_example(tok, t, template_parts(tok)), t.references)
             for t in make_task("lookup", 3, seed=1, split="test")]
    res = E.evaluate_heads(cfg, init_params(cfg, 0), items, ["wait-k:k=1"], tmp_path, task="lookup",
                           detokenize=lambda t: tok.decode(t, skip_special_tokens=True),
                           eos_ids=[tok.convert_tokens_to_ids("<|im_end|>")],
                           word_starts=word_start_table(tok, cfg.vocab_size), max_new_tokens=4, batch_size=3,
                           progress=False, decode_fn=session_decode, seconds_per_unit=0.25)
    lat = res["settings"][0]["latency"]
    for k in ("al_word", "laal_word", "al_token", "laal_token", "dal_token", "ap_token"):
        assert lat[k + "_ca"] > lat[k], k
    rec = res["settings"][0]["examples"][0]
    assert len(rec["elapsed"]) == len(rec["tokens"]) and np.all(np.diff(rec["elapsed"]) > 0)
    assert res["timing"]["device"].startswith("cpu (") and res["timing"]["seconds_per_unit"] == 0.25
