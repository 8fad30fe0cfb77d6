"""Each study task trains and evaluates through the ordinary `train` / `eval` config path (the study
tokenizer is picked from data.synthetic.tasks; the task's quality metric from its name)."""
import json

import pytest

from proactive_jax.cli import main

QUALITY = {"ledger": "acc", "verb-final": "BLEU", "synonym-map": "mref"}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_run")
    assert main(["train", "configs/tiny-synthetic.yaml", "model.preset=tiny-study",
                 "data.synthetic.tasks=[ledger, verb-final, synonym-map]", "data.synthetic.n_train=24",
                 "data.synthetic.n_valid=0", "data.global_batch_size=8", "data.buckets=[[48, 24]]", "steps=2",
                 f"out_dir={out}", "progress=false", "eval_every=0", "tensorboard=false",
                 "checkpoint.async_save=false"]) == 0
    return out


@pytest.mark.parametrize("task", list(QUALITY))
def test_study_task_trains_and_evaluates(study_run, task, tmp_path):
    out = tmp_path / task
    assert main(["eval", f"checkpoint={study_run}", f"task={task}", "num_examples=3", "calibration_examples=2",
                 "heads=[batch, 'entropy:tau=q0.9']", f"out_dir={out}", "progress=false", "max_new_tokens=8",
                 "batch_size=4"]) == 0
    rows = [l for l in (out / "table.md").read_text().split("\n\n")[0].splitlines() if l.startswith("|")]
    assert rows[0].split("|")[2].strip() == QUALITY[task]
    res = json.loads((out / "results.json").read_text())
    assert len(res["settings"]) == 2
    recs = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
    assert {r["id"].split("/")[0] for r in recs if "prediction" in r} == {task}


def test_study_eval_refuses_calibrating_on_the_scored_split(study_run, tmp_path, capsys):
    assert main(["eval", f"checkpoint={study_run}", "task=ledger", "split=test", "calibration_split=test",
                 f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "calibration_split" in err[0]
