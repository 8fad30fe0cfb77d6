"""The study's claims on fabricated results: nothing passes at chance or at equality, a clear win passes (so the
test can fail), a point writing at once would reach changes no verdict, and cell files are resumable."""
import json

import numpy as np
import pytest

from proactive_jax.demo import study as S
from proactive_jax.demo import study_report as SR

N, SEEDS, VALUES = 60, (0, 1, 2), ("amber", "jade")


def _cfg(tmp_path):
    return S.StudyConfig(out_dir=str(tmp_path), seeds=SEEDS, tasks=("ledger",), lambdas=(0.1,), topks=(100,),
                         alphas=(0.0,), trailing=(True, False), schedules=("multinomial",),
                         ablation_tasks={"trailing": ["ledger"]}, n_test=N, n_boot=200)


def _setting(family, quality, rco, seed):
    rng = np.random.default_rng([seed, int(1000 * quality)])  # equal qualities: the same examples right
    right = rng.random(N) < quality
    recs = [{"id": f"ledger/test/0/{i}", "prediction": "amber" if r else "jade", "references": ["amber"],
             "phi": [int(round(rco * 32))] * 2, "M": 32} for i, r in enumerate(right)]
    return {"family": family, "records": recs}


def _cells(spec):
    """``spec[variant][setting] = (family, quality, rco)`` -> cells for every seed."""
    return {(seed, v, "ledger"): {"settings": {name: _setting(f, q, r, seed) for name, (f, q, r) in st.items()}}
            for seed in SEEDS for v, st in spec.items()}


def _heads(entropy, waitk, batch=(0.92, 1.0)):
    return {"batch": ("batch", *batch), "entropy:tau=1.0": ("write-at-once", 0.125, 0.0),
            "entropy:tau=0.1": ("entropy", *entropy), "wait-k:k=9": ("wait-k", *waitk),
            "attention:tau=0.5": ("attention", 0.3, 0.9)}


def _verdicts(tmp_path, spec):
    cfg = _cfg(tmp_path)
    grid = S.variants(cfg)
    assert set(grid) == {"proactive", "trailing=off"}
    cells = _cells(spec)
    views = {"ledger": SR.TaskView(cfg, cells, "ledger", grid)}
    out = SR.claims(cfg, views, grid, lambda g, x: S.variant_of(cfg, g, x))
    return {d["claim"].split(".")[0]: d for d in out}


def test_a_clear_win_is_reproduced(tmp_path):
    v = _verdicts(tmp_path, {"proactive": _heads((0.9, 0.6), (0.2, 0.6)),
                             "trailing=off": _heads((0.45, 0.6), (0.2, 0.6))})
    assert v["2"]["verdict"] == "reproduced", v["2"]
    assert v["10"]["verdict"] == "reproduced", v["10"]
    assert v["1"]["verdict"] == "reproduced" and v["1"]["value"]["lo"] > 0.9
    assert v["5"]["verdict"] == "not testable here"  # no probe points in this grid


def test_nothing_passes_at_equality(tmp_path):
    same = _heads((0.6, 0.6), (0.6, 0.6))  # wait-k = entropy, trailing off = on
    v = _verdicts(tmp_path, {"proactive": same, "trailing=off": same})
    for c in ("2", "10"):
        assert v[c]["verdict"] == "not reproduced" and v[c]["diff"]["estimate"] == 0, v[c]


def test_nothing_passes_at_chance(tmp_path):
    # the claimed side at chance (12.5%), the baseline far below: the anchor credits both with chance
    v = _verdicts(tmp_path, {"proactive": _heads((0.125, 0.6), (0.0, 0.6)),
                             "trailing=off": _heads((0.0, 0.6), (0.0, 0.6))})
    assert v["2"]["verdict"] == v["10"]["verdict"] == "not reproduced"
    # an unlearned task (batch at chance): every claim is not testable, whatever the heads do
    v = _verdicts(tmp_path, {"proactive": _heads((0.9, 0.6), (0.0, 0.6), batch=(0.125, 1.0)),
                             "trailing=off": _heads((0.0, 0.6), (0.0, 0.6), batch=(0.125, 1.0))})
    assert {d["verdict"] for d in v.values()} == {"not testable here"}


def test_a_write_at_once_point_changes_no_verdict(tmp_path):
    base = {"proactive": _heads((0.9, 0.6), (0.2, 0.6)), "trailing=off": _heads((0.45, 0.6), (0.2, 0.6))}
    a = _verdicts(tmp_path, base)
    guess = {**base["proactive"], "wait-k:k=1": ("wait-k", 0.125, 0.03)}  # a chance-level guess at RCO 0.03
    b = _verdicts(tmp_path, {**base, "proactive": guess})
    for c in a:
        assert a[c]["verdict"] == b[c]["verdict"]
        assert a[c].get("diff", {}).get("estimate") == b[c].get("diff", {}).get("estimate")


def test_cells_resume_and_bad_files_are_named(tmp_path):
    cfg = _cfg(tmp_path)
    path, key = S.cell_path(cfg, 0, "proactive", "ledger"), S.cell_key(cfg, 0, "proactive", "ledger")
    assert S.read_cell(path, key) == (None, None)
    cell = S.write_cell(path, key, {"batch": _setting("batch", 1, 1, 0)}, {"seed": 0})
    assert S.read_cell(path, key) == (cell, None)
    assert S.read_cell(path, S.cell_key(cfg, 1, "proactive", "ledger"))[1].startswith("stale")
    path.write_text(path.read_text()[:-20])
    assert S.read_cell(path, key) == (None, "unreadable (JSONDecodeError)")
    path.write_text(json.dumps({**cell, "complete": False}))
    assert S.read_cell(path, key)[1].startswith("partial")
    short = {"a": _setting("batch", 1, 1, 0), "b": {"family": "x", "records": []}}
    path.write_text(json.dumps({**cell, "settings": short}))
    assert S.read_cell(path, key)[1].startswith("partial")


def test_variants_and_config_errors():
    from proactive_jax.errors import ConfigError

    grid = S.variants(S.StudyConfig())
    assert list(grid)[0] == "proactive" and "lambda=0.1" not in grid and "topk=full" in grid
    assert grid["topk=full"]["objective"]["kl_topk"] == 4224 and grid["schedule=uniform"]["tasks"]
    assert S.variant_of(S.StudyConfig(), "lambda", 0.1) == "proactive"
    for bad in (["tasks=[lookup]"], ["seeds=[0, 0]"], ["topks=[-1]"], ["schedules=[wait-k]"],
                ["ablation_tasks={lambdas: [ledger]}"]):
        with pytest.raises(ConfigError):
            S.load_study_config(None, bad)


def test_report_files_from_fabricated_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(SR, "PLOT_BOOT", 20)
    cfg = S.StudyConfig(**{**_cfg(tmp_path).__dict__, "n_boot": 50})
    grid = S.variants(cfg)
    cells = _cells({"proactive": _heads((0.9, 0.6), (0.2, 0.6)), "trailing=off": _heads((0.45, 0.6), (0.2, 0.6))})
    res = SR.write_report(cfg, cells, grid, {"cells": 1.0}, {"reused": 0, "computed": 6, "recomputed": 0},
                          lambda g, x: S.variant_of(cfg, g, x), "proactive-jax study --quick")
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2] == "Command: `proactive-jax study --quick`"
    claims = report.split("## Claims")[1].split("\n## ")[0]
    assert len([l for l in claims.splitlines() if l.startswith("| ") and "---" not in l]) == 1 + len(res["claims"])
    assert "| oracle policy | oracle |" in report
    assert "| chance (best source-blind output) | chance | 12.5 | 0 |" in report
    assert set(res["plots"]) == {"ledger_quality_latency.png", "ablations.png"}
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in res["plots"])
    assert json.loads((tmp_path / "results.json").read_text())["claims"] == json.loads(json.dumps(res["claims"]))


def test_calibrated_settings_get_one_name_across_seeds():
    cfg = S.StudyConfig()  # every configured qX sweep is q0.9
    assert SR.setting_name(cfg, "entropy:decide_at=token,min_read=0,tau=0.25", {}) == ("entropy:tau=q0.9", 0.9)
    assert SR.setting_name(cfg, "self/probe:decide_at=token,min_read=0,tau=0.97", {}) == ("self/probe:tau=q0.9", 0.9)
    assert SR.setting_name(cfg, "entropy:tau=q0.8", {"quantile": 0.8}) == ("entropy:tau=q0.8", 0.8)
    assert SR.setting_name(cfg, "entropy:tau=0.1", {"quantile": None}) == ("entropy:tau=0.1", None)
