"""The speech stage's pieces: synthetic tone-words, example building, the targets check (no training here:
the stage itself runs in the full demo; the docs/measurements.md has its measured run)."""
import numpy as np
import pytest

from proactive_jax.data import synthetic_audio as SA
from proactive_jax.demo import speech as DS
from proactive_jax.data.synthetic_audio import CATEGORY_OF, SYLLABLES, WORDS, make_speech_task
from proactive_jax.models.audio import output_lengths


def test_synthetic_speech_is_deterministic_and_confusable():
    a = make_speech_task("speech-lookup", 4, seed=1, split="test")
    b = make_speech_task("speech-lookup", 4, seed=1, split="test")
    assert all(np.array_equal(x.waveform, y.waveform) for x, y in zip(a, b))
    c = make_speech_task("speech-lookup", 4, seed=1, split="train")
    assert not np.array_equal(a[0].waveform, c[0].waveform)
    for it in make_speech_task("speech-lookup", 40, seed=1, split="test"):
        # exactly one spoken word of the asked category; it is the answer and its end is the evidence
        hits = [i for i, w in enumerate(it.words) if CATEGORY_OF[w] == it.question]
        assert len(hits) == 1 and it.target_words == (it.words[hits[0]],) and it.evidence_words == (hits[0],)
        assert len(set(it.words)) == len(it.words) and 3 <= len(it.words) <= 6
        assert list(it.word_ends) == sorted(it.word_ends) and it.word_ends[-1] <= it.waveform.size
    first = [w.split("-")[0] for w in WORDS]
    assert len(set(first)) < len(first)  # some words share their first syllable
    assert all(len(w.split("-")) in (2, 3) for w in WORDS)
    assert len(SA.speech_vocabulary()) == 24  # the tiny-audio preset's vocab_size (configs/tiny-speech.yaml)
    positions = [make_speech_task("speech-lookup", 60, seed=2)[i].evidence_words[0] for i in range(60)]
    assert len(set(positions)) >= 4  # the answer's position varies
    assert len(set(SYLLABLES.values())) == len(SYLLABLES)
    # the lexicon: the category syllable only ever first, a word's last syllable used by no other word (so one
    # syllable identifies a word wherever it is spoken), 3-syllable words' middle syllable shared filler
    syl = [w.split("-") for w in WORDS]
    assert len({s[-1] for s in syl}) == len(WORDS)
    assert not {s[0] for s in syl} & {x for s in syl for x in s[1:]}
    assert all(CATEGORY_OF[w] == f"cat:{s[0]}" for w, s in zip(WORDS, syl))
    assert len({s[1] for s in syl if len(s) == 3}) == 1 and not {s[1] for s in syl if len(s) == 3} & {s[-1] for s in syl}
    assert set(SYLLABLES) == {x for s in syl for x in s}
    rates = [it.word_ends[0] / len(it.words[0].split("-")) for it in make_speech_task("speech-transcribe", 20)]
    assert max(rates) > 1.4 * min(rates)  # speaking rate varies
    with pytest.raises(ValueError, match="unknown speech task"):
        make_speech_task("speech-x", 1)


def test_words_per_utterance():
    one = make_speech_task("speech-lookup", 8, seed=0, words_per_utterance=(1, 2))
    assert all(len(it.words) == 1 and it.words == it.target_words and it.evidence_words == (0,) for it in one)
    assert all(CATEGORY_OF[it.words[0]] == it.question for it in one)
    many = make_speech_task("speech-transcribe", 12, seed=0, words_per_utterance=(2, 4))
    assert {len(it.words) for it in many} <= {2, 3} and len({len(it.words) for it in many}) == 2
    for bad in ((0, 3), (3, 3), (2, 11)):
        with pytest.raises(ValueError, match="words_per_utterance"):
            make_speech_task("speech-lookup", 1, words_per_utterance=bad)
    with pytest.raises(ValueError, match="do not fit max_seconds=0.5"):
        make_speech_task("speech-transcribe", 1, max_seconds=0.5, words_per_utterance=(8, 9))


def test_build_examples_and_evidence_chunks():
    cfg = DS.SpeechDemoConfig.from_dict({"n_train": 4})
    acfg = DS.model_config(cfg)
    items = make_speech_task("speech-transcribe", 3, seed=0)
    feats, valid, exs = DS.build(items, cfg, acfg)
    assert feats.shape == (3, cfg.num_mel_bins, acfg.encoder.num_frames)
    for it, v, ex in zip(items, valid, exs):
        assert v == -(-it.waveform.size // 160)  # valid frames of the window
        assert sum(len(u) for u in ex.units) == int(output_lengths(np.int64(v))[1])
        assert all(len(u) == acfg.chunk for u in ex.units[:-1])
        assert ex.prompt[-1] == SA.BOS_A and ex.end[0] == SA.EOS_A and ex.target[-1] == SA.EOS
        ev = DS.evidence_chunks(it, acfg.chunk)
        assert ev == sorted(ev) and 1 <= ev[0] and ev[-1] <= ex.M
    with pytest.raises(ValueError, match="unknown keys"):
        DS.SpeechDemoConfig.from_dict({"stepz": 3})


def test_targets_need_a_learnt_batch_model():
    row = lambda head, q, rco, ail: {"head": head, "quality": q, "rco": rco, "ail": ail}  # noqa: E731
    look = [row("batch", 90, 1.0, 3), row("entropy:tau=0.1", 88, 0.7, 1), row("wait-k:k=2", 40, 0.5, -2)]
    tr = [row("batch", 20, 1.0, 4), row("entropy:tau=0.1", 21, 0.8, 1.0), row("wait-k:k=4", 22, 0.8, 2.0)]
    got = {t["target"].split(":")[0] + str(i): t["pass"] for i, t in
           enumerate(DS.check_speech_targets({"speech-lookup": look, "speech-transcribe": tr}))}
    assert list(got.values()) == [True, True, True]
    chance = [row("batch", 6, 1.0, 3), row("entropy:tau=0.1", 10, 0.3, 1)]
    assert not any(t["pass"] for t in DS.check_speech_targets({"speech-lookup": chance}))
    # a collapsed transcriber (every head writes the same words) would pass the WER/AIL comparison trivially
    collapsed = [row("batch", 77, 1.0, 4), row("attention:tau=0.7", 75, 0.2, -3.7), row("wait-k:k=2", 75, 0.4, -2.2)]
    assert not any(t["pass"] for t in DS.check_speech_targets({"speech-transcribe": collapsed}))
    assert DS.check_speech_targets({"speech-transcribe": [dict(r, quality=r["quality"] - 30) for r in collapsed]})[0]["pass"]


def test_encoder_init_lets_the_audio_through():
    """With models.audio's default init (normal(0.02) convs + unit sinusoids) two utterances' audio embeddings
    differ by ~1% (the positions dominate: the stage did not learn); the demo's fan-in init makes them differ."""
    from proactive_jax.models.audio import encode, init_params, sinusoids

    cfg = DS.SpeechDemoConfig.from_dict({})
    acfg = DS.model_config(cfg)
    items = make_speech_task("speech-transcribe", 2, seed=3)
    feats, valid, _ = DS.build(items, cfg, acfg)
    fam = (np.arange(feats.shape[2])[None] < valid[:, None]).astype(np.int32)
    n = int(output_lengths(valid.min())[1])
    rel = {}
    for mode in ("default", "fan_in"):
        p = DS.demo_init(init_params(acfg, 0), DS.SpeechDemoConfig.from_dict({"encoder_init": mode}))
        e = np.asarray(encode(acfg, p, feats, fam, mask="causal", conv_edge="zero"))[:, :n]
        rel[mode] = np.linalg.norm(e[0] - e[1]) / np.linalg.norm(e[0])
    assert rel["default"] < 0.05 and rel["fan_in"] > 0.3, rel
    k = p["audio_tower"]["conv1"]["kernel"]
    np.testing.assert_allclose(np.std(k), 1 / np.sqrt(3 * cfg.num_mel_bins), rtol=0.1)
    pos = p["audio_tower"]["embed_positions"]["embedding"]
    np.testing.assert_allclose(pos, 0.2 * sinusoids(*pos.shape), atol=1e-6)
    with pytest.raises(ValueError, match="encoder_init"):
        DS.demo_init(init_params(acfg, 0), DS.SpeechDemoConfig.from_dict({"encoder_init": "xavier"}))


def test_wer_counts_tone_words_not_syllables():
    from proactive_jax.evaluation.metrics import wer

    ref, hyp = ["ka-mo", "ri-na-do", "su-pi", "ka-lu"], ["ka-mo", "ri-na-gu", "su-pi", "ka-lu"]
    # one wrong word of four: 25%; scored on the raw hyphenated strings the normaliser would count 9 syllables
    # with one wrong (11.1%)
    assert wer([DS.transcript(hyp)], [DS.transcript(ref)]) == pytest.approx(25.0)
    assert wer([" ".join(hyp)], [" ".join(ref)]) == pytest.approx(100 / 9)
    assert DS.transcript(["su-na-ha"]) == "sunaha" and DS.transcript([]) == ""
    assert len({DS.transcript([w]) for w in WORDS}) == len(WORDS)  # still one distinct string per word


TINY_STAGE = {"n_train": 6, "n_test": 3, "steps": 2, "batch_size": 4, "heads": ["batch", "wait-k:k=2"]}


def _json(x):
    import json

    return json.loads(json.dumps(x, default=str))


def test_speech_stage_in_a_second_process_equals_in_process(tmp_path):
    import json
    import subprocess
    import sys

    # the reference: run_speech_stage called directly, in a fresh interpreter of its own (run inside the long-lived
    # pytest process this stage's first compile once aborted XLA after ~350 other tests; a fresh process is what
    # the demo itself is), side by side with the demo's child
    job = DS.start_speech_process(TINY_STAGE, tmp_path / "child")
    code = ("import json, sys; from proactive_jax.demo.speech import run_speech_stage; "
            "run_speech_stage(json.loads(sys.argv[1]), sys.argv[2], say=lambda m: None)")
    ref = subprocess.run([sys.executable, "-c", code, json.dumps(TINY_STAGE), str(tmp_path / "inline")],
                         capture_output=True, text=True, timeout=600)
    said = []
    child = DS.finish_speech_process(job, say=said.append)
    assert ref.returncode == 0, ref.stderr[-2000:]
    inline = json.loads((tmp_path / "inline" / "speech_results.json").read_text())
    assert child["results"] == _json(inline["results"])  # same numbers, every head, both tasks
    assert child["targets"] == _json(inline["targets"])
    assert child["timings_s"]["waited"] >= 0 and child["timings_s"]["total"] > 0
    assert any(ln.startswith("[speech 3/3] evaluate") for ln in said)  # the child's lines are replayed
    assert (tmp_path / "child" / "speech.log").exists()


def test_speech_child_errors_and_stop(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):  # bad settings fail before any child starts
        DS.start_speech_process({"stepz": 3}, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    job = DS.start_speech_process({**TINY_STAGE, "encoder_init": "xavier"}, tmp_path / "b")
    with pytest.raises(RuntimeError, match=r"exited with status 1 .*xavier.*full log: .*speech\.log"):
        DS.finish_speech_process(job)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "speech_results.json").write_text("{}")  # a previous run's results are never reported
    job = DS.start_speech_process(TINY_STAGE, tmp_path / "c")
    assert not (tmp_path / "c" / "speech_results.json").exists()
    DS.stop_speech_process(job)  # e.g. Ctrl-C in the demo's text stages
    assert job.proc.poll() is not None and job.proc.returncode != 0  # terminated, not finished


def test_run_demo_starts_the_child_and_stops_it_when_the_text_stages_fail(tmp_path, monkeypatch):
    import dataclasses

    from proactive_jax.demo import text as D

    started, seen = [], []
    real_start = DS.start_speech_process
    monkeypatch.setattr(DS, "start_speech_process", lambda *a: started.append(real_start(*a)) or started[-1])

    def failing_text_stages(cfg, speech_on, job):
        seen.append((speech_on, job))
        raise KeyboardInterrupt  # e.g. Ctrl-C during pretraining

    monkeypatch.setattr(D, "_run_stages", failing_text_stages)
    cfg = dataclasses.replace(D.load_demo_config(None), out_dir=str(tmp_path), speech=TINY_STAGE)
    with pytest.raises(KeyboardInterrupt):
        D.run_demo(cfg)
    assert len(started) == 1 and seen == [(True, started[0])]
    assert started[0].proc.returncode is not None and started[0].proc.returncode != 0  # terminated by run_demo

    monkeypatch.setattr(D, "_run_stages", lambda cfg, speech_on, job: {"speech_on": speech_on, "job": job})
    off = dataclasses.replace(cfg, speech={**TINY_STAGE, "parallel": False})
    assert D.run_demo(off) == {"speech_on": True, "job": None} and len(started) == 1  # inline: no child
    none = dataclasses.replace(cfg, speech={"enabled": False})
    assert D.run_demo(none) == {"speech_on": False, "job": None} and len(started) == 1
