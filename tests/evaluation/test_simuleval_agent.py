"""The SimulEval agent end to end: `simuleval --agent-class ...` on a tiny checkpoint and a 5-line fixture;
SimulEval's AL / LAAL equal the project's metrics on the same traces (the session's tokens and phi)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("simuleval", reason="SimulEval is not installed: pip install -e '.[simuleval]' && "
                    "pip install --no-deps simuleval==1.1.4 (see pyproject.toml)")

from proactive_jax.data.synthetic import ASSET_DIR  # noqa: E402
from proactive_jax.evaluation import metrics  # noqa: E402
from proactive_jax.method.session import StreamSession  # noqa: E402
from proactive_jax.models.hf_export import save_pretrained  # noqa: E402
from proactive_jax.training.loading import load_model  # noqa: E402
from proactive_jax.models.qwen import init_params  # noqa: E402
from tests.helpers import tiny_qwen3  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "simuleval"
HEAD, MAX_NEW = "wait-k:k=2", 9


def test_simuleval_agent_end_to_end(tmp_path, monkeypatch):
    from simuleval.cli import main
    from transformers import AutoTokenizer

    ckpt = tmp_path / "ckpt"
    cfg = tiny_qwen3(vocab_size=128, eos_token_id=3)
    save_pretrained(cfg, init_params(cfg, 0), ckpt, tokenizer_dir=ASSET_DIR)
    out = tmp_path / "out"
    # the `simuleval` command's own entry point, in this process (so the compiled session step is shared)
    argv = ["simuleval", "--agent-class", "proactive_jax.evaluation.simuleval_agent.ProactiveAgent",
           "--source", str(FIX / "src.txt"), "--target", str(FIX / "tgt.txt"), "--output", str(out),
           "--checkpoint", str(ckpt), "--head", HEAD, "--max-new-tokens", str(MAX_NEW),
           "--latency-metrics", "AL", "LAAL"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    scores = dict(zip(*[line.split("\t") for line in (out / "scores.tsv").read_text().strip().splitlines()]))
    instances = [json.loads(x) for x in (out / "instances.log").read_text().splitlines()]
    assert len(instances) == 5

    # the same traces in-process: a live session per line, words pushed one by one
    config, params, _ = load_model(ckpt)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    al, laal, interleaved = [], [], False
    for src, ins in zip((FIX / "src.txt").read_text().splitlines(), instances):
        s = StreamSession.from_tokenizer(config, params, HEAD, tok, max_new_tokens=MAX_NEW)
        for w in src.split():
            s.push_text(w)
        s.finish()
        # the trace of what SimulEval can see: text tokens (the agent drops the end-of-turn token and words
        # that detokenize to nothing, e.g. the ids of the embedding rows padded past the tokenizer)
        keep = [i for i, t in enumerate(s.tokens) if t not in s.eos_ids and tok.decode([t]).strip()]
        body = [s.tokens[i] for i in keep]
        phi = [s.phi[i] for i in keep]
        flags = [bool(s.word_starts[t]) for t in body]
        M, ref_len = len(src.split()), len(ins["reference"].split(" "))
        delays = metrics.word_delays(phi, flags, M)
        assert ins["prediction"] == tok.decode(body, skip_special_tokens=True).strip()
        np.testing.assert_array_equal(ins["delays"], delays)  # SimulEval saw the session's trace
        interleaved |= 0 < delays[0] < M
        rep = metrics.latency_report(phi, M, flags, ref_len)
        al.append(rep["al_word"])
        laal.append(rep["laal_word"])
    assert interleaved, "the fixture should make the agent write before the source ends"
    # SimulEval's report (rounded to 3 decimals), and its own scorers unrounded on its instance log
    np.testing.assert_allclose(float(scores["AL"]), np.mean(al), rtol=0, atol=5e-4)
    np.testing.assert_allclose(float(scores["LAAL"]), np.mean(laal), rtol=0, atol=5e-4)
    from simuleval.evaluator.instance import LogInstance
    from simuleval.evaluator.scorers.latency_scorer import ALScorer, LAALScorer
    logged = {i: LogInstance(line) for i, line in enumerate((out / "instances.log").read_text().splitlines())}
    np.testing.assert_allclose(ALScorer()(logged), np.mean(al), rtol=0, atol=1e-12)
    np.testing.assert_allclose(LAALScorer()(logged), np.mean(laal), rtol=0, atol=1e-12)
    assert "BLEU" in scores
