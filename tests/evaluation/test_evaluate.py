"""End-to-end evaluation on a tiny random model and synthetic data: files, table, plot, resume."""
import json

import numpy as np
import pytest

from proactive_jax.evaluation import sweep as E, results as R
from proactive_jax.data import load_tokenizer, make_task, render_example, template_parts, word_start_table
from proactive_jax.method.decode import stream_decode
from proactive_jax.models.qwen import init_params
from tests.helpers import tiny_qwen3

SWEEPS = ["batch", "wait-k:k=1|3", "entropy:tau=0.9|q0.5", "attention:tau=0.8,layers=-1:"]


@pytest.fixture(scope="module")
def setup():
    tok = load_tokenizer()
    parts = template_parts(tok)
    cfg = tiny_qwen3(vocab_size=len(tok))
    params = init_params(cfg, 0)
    items = []
    for task in ("lookup",):
        for t in make_task(task, 6, seed=1, split="test"):
            items.append(E.EvalItem(t.id, render_example(tok, t, parts), t.references))
    calib = [E.EvalItem(t.id, render_example(tok, t, parts), t.references)
             for t in make_task("lookup", 4, seed=1, split="valid")]
    eos = [tok.convert_tokens_to_ids("<|im_end|>")]
    return dict(tok=tok, cfg=cfg, params=params, items=items, calib=calib, eos=eos,
                ws=word_start_table(tok, cfg.vocab_size))


def _run(setup, out, decode_fn=None):
    s = setup
    return E.evaluate_heads(s["cfg"], s["params"], s["items"], SWEEPS, out, task="lookup",
                            detokenize=lambda t: s["tok"].decode(t, skip_special_tokens=True), eos_ids=s["eos"],
                            word_starts=s["ws"], max_new_tokens=6, batch_size=4, calibration=s["calib"],
                            progress=False, decode_fn=decode_fn)


def test_eval_end_to_end_and_resume(setup, tmp_path):
    res = _run(setup, tmp_path)
    n_settings = 1 + 2 + 2 + 1
    assert len(res["settings"]) == n_settings
    for name in ("results.json", "table.md", "quality_latency.png", "records.jsonl"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "quality_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "table.md").read_text()
    table = text.split("\n\n")[0].strip().splitlines()
    assert table[0].split("|")[1:-1] == [" method ", " acc ", " AIL ", " RCO "]
    assert len(table) == 2 + n_settings
    # rows are labelled with what the user wrote (and what a quantile resolved to), not the parameter dump
    labels = [line.split("|")[1].strip() for line in table[2:]]
    assert labels[:3] == ["batch", "wait-k k=1", "wait-k k=3"] and labels[3] == "entropy tau=0.9"
    assert labels[4].startswith("entropy tau=q0.5 (") and "min_read" not in labels[4]
    assert "| entropy |" in text and "curve area" in text
    for line in table[2:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert len(cells) == 4 and all(np.isfinite(float(c)) for c in cells[1:])
    saved = json.loads((tmp_path / "results.json").read_text())
    batch = [s for s in saved["settings"] if s["setting"] == "batch"][0]
    assert batch["latency"]["rco"] == pytest.approx(1.0)
    for ex in batch["examples"]:
        assert set(ex) >= {"prediction", "references", "phi", "word_delays", "M"}
        assert all(p == ex["M"] + 1 for p in ex["phi"])
    wait1 = [s for s in saved["settings"] if s["setting"].startswith("wait-k:") and "k=1" in s["setting"]][0]
    assert wait1["latency"]["rco"] < 1.0
    # the quantile setting was calibrated on the pool and resolved to a concrete tau, named in its label
    q = [s for s in saved["settings"] if s["quantile"] == 0.5][0]
    assert q["label"] == f"entropy tau=q0.5 ({q['tau']:.3g})" and f"tau={q['tau']}" in q["setting"]
    assert q["calibration"]["pool_size"] > 20 and abs(q["calibration"]["write_fraction"] - 0.5) < 0.05
    assert len(q["calibration"]["reads_histogram"]) > 3, "the pool spans the read counts"

    # delete half of the per-example decode records: a re-run decodes only the missing ones
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    decodes = [i for i, l in enumerate(lines) if json.loads(l)["kind"] == "decode"]
    drop = set(decodes[::2])
    (tmp_path / "records.jsonl").write_text("".join(l + "\n" for i, l in enumerate(lines) if i not in drop)
                                            + '{"torn": ')  # and a torn last line from an interrupted write
    decoded = []

    def counting(*a, **k):
        decoded.extend(a[2])
        return stream_decode(*a, **k)

    res2 = _run(setup, tmp_path, decode_fn=counting)
    assert len(decoded) == len(drop)
    for a, b in zip(res["settings"], res2["settings"]):
        assert a["setting"] == b["setting"] and a["headline"] == b["headline"]
        assert [e["prediction"] for e in a["examples"]] == [e["prediction"] for e in b["examples"]]


def test_bad_inputs(setup, tmp_path):
    with pytest.raises(E.EvalError, match="unknown decision head"):
        E.expand_sweep("greedy:tau=0.3")
    with pytest.raises(E.EvalError, match="tau"):
        E.expand_sweep("entropy:tau=1.5")
    with pytest.raises(E.EvalError, match="unknown metric"):
        R.task_quality("lookup", metric="meteor")
    (tmp_path / "records.jsonl").write_text(json.dumps({"kind": "decode", "task": "word-map", "setting": "batch",
                                                        "id": "x"}) + "\n")
    with pytest.raises(E.EvalError, match="task 'word-map'"):
        R.RecordStore(tmp_path / "records.jsonl", "lookup")
    (tmp_path / "results.json").write_text(json.dumps({"task": "word-map", "settings": []}))
    with pytest.raises(E.EvalError, match="expected task 'lookup'"):
        R.load_results(tmp_path, task="lookup")
    with pytest.raises(ValueError, match="2 predictions but 1"):
        E.M.quality("squad", ["a", "b"], [["a"]])


def test_expand_sweep():
    got = [s.spec for s in E.expand_sweep("wait-k:k=1|3,decide_at=token")]
    assert got == ["wait-k:k=1,decide_at=token", "wait-k:k=3,decide_at=token"]
    q = E.expand_sweep("attention:tau=q0.9,layers=0,1")
    assert q[0].quantile == 0.9 and "layers=0,1" in q[0].spec


def test_curve_area():
    # batch alone: only the r = 1 budget is met
    assert R.curve_area([], 80.0) == pytest.approx(80.0 / 101)
    # a head matching batch at RCO 0 scores the batch quality; a step curve scores its budgets' best
    assert R.curve_area([(0.0, 80.0)], 80.0) == pytest.approx(80.0)
    assert R.curve_area([(0.5, 60.0)], 80.0) == pytest.approx((50 * 60.0 + 80.0) / 101)
    # dominated points do not count; order does not matter
    assert R.curve_area([(0.5, 60.0), (0.7, 40.0), (0.2, 10.0)], 80.0) == \
        pytest.approx(R.curve_area([(0.2, 10.0), (0.5, 60.0)], 80.0))
    res = {"settings": [{"family": "batch", "headline": 80.0, "latency": {"rco": 1.0}},
                        {"family": "entropy", "headline": 60.0, "latency": {"rco": 0.5}}]}
    assert R.family_areas(res)["entropy"] == pytest.approx((50 * 60.0 + 80.0) / 101)


def test_probe_head_needs_a_probe(setup, tmp_path):
    s = setup
    with pytest.raises(E.EvalError, match="no probe was given"):
        E.evaluate_heads(s["cfg"], s["params"], s["items"], ["probe:tau=0.5"], tmp_path, task="lookup",
                         detokenize=str, eos_ids=s["eos"], progress=False)


def test_plot_series_have_distinct_colour_and_marker_pairs():
    """A crowded plot (the demo's word-map plot has 13 series) keeps every series apart by colour AND marker."""
    pairs = [tuple(sorted(R.series_style(k).items())) for k in range(60)]
    assert len(set(pairs)) == 60
    assert len({R.series_style(k)["color"] for k in range(13)}) == 13  # the first 13 differ in colour alone


def test_a_model_at_chance_is_flagged_in_the_table():
    """lookup answers one of 6 items: a batch head at 14.5% has learned nothing, and the table says so."""
    at_chance = {"settings": [{"family": "batch", "setting": "batch", "headline": 14.5,
                               "latency": {"ail": 0.0, "rco": 1.0}}]}
    table = R.markdown_table(at_chance, "lookup")
    assert "quality at chance level (batch 14.5 vs 16.7 by guessing)" in table
    learned = {"settings": [dict(at_chance["settings"][0], headline=60.0)]}
    assert "chance level" not in R.markdown_table(learned, "lookup")
    assert R.chance_warning(at_chance, "word-map") is None  # no guessing level defined for BLEU
