"""`proactive-jax train` on the bounded-memory audio stream (``audio.stream``): a tiny fixture directory written by
``prepare-audio`` from numpy-tone WAV rows, the tiny-audio preset's shape with a Qwen-style tokenizer.

Checks: the streamed batches equal the in-memory pipeline's collate of the same rows (librispeech and spoken-squad,
an independent path: waveform -> log_mel_windows in the collate); each step's bucket is the smallest holding its
rows (two hosts in lockstep agree on it); N straight steps == k steps + resume + N-k steps through the CLI (losses
and params bitwise) on a stream with a skipped row, so only the stream state in the checkpoint meta resumes it
exactly; skips and unfit rows are in the state; config errors are one line. One train-step compile (the
``straight`` fixture); everything else reuses it or compiles nothing.
"""
import copy
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("array_record")

from proactive_jax.cli import main  # noqa: E402
from proactive_jax.data.audio import write_wav  # noqa: E402
from proactive_jax.training import audio_batches as AB, audio_examples as AE, data as TD, state as TSt  # noqa: E402
from proactive_jax.training.checkpoint import CheckpointStore, restore_params  # noqa: E402
from proactive_jax.models.presets import MODEL_PRESETS
from proactive_jax.training.run_config import load_run_config  # noqa: E402
from tests.training.util import ROOT, max_diff  # noqa: E402

CONFIG = ROOT / "configs" / "tiny-speech.yaml"
N, K = 4, 2
WORDS = ("HELLO", "WORLD", "THE", "CAT", "SAT", "YES", "NO", "FOX")


def _rows(n, spoken_qa=False):
    """Deterministic tone utterances of 0.3-1.9 s (16 kHz) with short transcripts / answers."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([7, i])
        t = np.arange(int(rng.uniform(0.3, 1.9) * 16000)) / 16000
        x = (0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        out.append((x, text, f"u{i}", f"what is {WORDS[i % len(WORDS)].lower()}" if spoken_qa else None))
    return out


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Tokenizer + config.json (tiny-audio shape, <|AUDIO|> = the tokenizer's id) + WAV manifests + prepared dirs."""
    from transformers import AutoTokenizer

    from tests.tokenizers_util import qwen_style_tokenizer_dir

    root = tmp_path_factory.mktemp("audio_stream_train")
    tok = AutoTokenizer.from_pretrained(str(qwen_style_tokenizer_dir("qwen2.5")))
    tok.add_special_tokens({"additional_special_tokens": ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]})
    tok.save_pretrained(root / "tok")
    hf = copy.deepcopy(MODEL_PRESETS["tiny-audio"])
    hf["audio_token_index"] = tok.convert_tokens_to_ids("<|AUDIO|>")
    hf["text_config"].update(vocab_size=len(tok), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    (root / "config.json").write_text(json.dumps(hf))
    out = {"root": root, "tok": root / "tok", "config": root / "config.json"}
    for name, qa in (("ls", False), ("sqa", True)):
        lines = []
        for x, text, rid, q in _rows(10, qa):
            write_wav(root / f"{name}-{rid}.wav", x, 16000)
            lines.append(json.dumps({"audio": f"{name}-{rid}.wav", "text": text, "id": rid,
                                     **({"question": q} if q else {})}))
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        assert main(["prepare-audio", str(root / f"{name}.jsonl"), str(root / name), "--rows-per-shard", "4"]) == 0
    # the ASR rows + one silent row (bad audio: skipped under on_bad_audio=skip, so position != step x batch)
    write_wav(root / "silent.wav", np.zeros(8000, np.float32), 16000)
    (root / "lsbad.jsonl").write_text((root / "ls.jsonl").read_text()
                                      + json.dumps({"audio": "silent.wav", "text": "YES", "id": "silent"}) + "\n")
    assert main(["prepare-audio", str(root / "lsbad.jsonl"), str(root / "lsbad")]) == 0
    return out


def overrides(fx, task="librispeech", stream="ls", on_bad="error", **extra):
    o = [f"model.config_json={fx['config']}", "model.preset=null", f"data.tokenizer={fx['tok']}",
         "model.config={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2, "
         "num_key_value_heads: 1, head_dim: 16}",
         "model.audio_config={encoder_layers: 1, d_model: 32, encoder_attention_heads: 2, encoder_ffn_dim: 48, "
         "max_source_positions: 100, num_mel_bins: 16}",  # 2 s windows, 50 tokens, chunks of 5
         f"data.task={task}", f"audio.stream={{dir: {fx['root'] / stream}, on_bad_audio: {on_bad}}}", "audio.system=null",
         "audio.max_seconds=2.0", "data.buckets=[[56, 12], [88, 24]]", "data.global_batch_size=8",
         "objective.kl_topk=8", "optim.lr=3e-3", "optim.warmup_steps=1", f"steps={N}", f"checkpoint.every={K}",
         "eval_every=0", "progress=false", "tensorboard=false", "mesh.data=4", "mesh.fsdp=2"]
    return o + [f"{k}={v}" for k, v in extra.items()]


def _losses(run_dir) -> list:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


@pytest.mark.parametrize("task,name", [("librispeech", "ls"), ("spoken-squad", "sqa")])
def test_streamed_batches_equal_the_in_memory_collate_of_the_same_rows(fx, task, name):
    from proactive_jax.data.audio_tasks import load_manifest, spoken_squad

    run = load_run_config(CONFIG, overrides(fx, task, name, out_dir="unused"))
    acfg = TSt.resolve_model_config(run.model, run.audio)
    train = TD.build_data(run, acfg).train
    assert isinstance(train, AB.StreamedAudioBatches) and train.steps_per_epoch == 1
    got = train.batch_at(0)
    # the same rows through the in-memory path: manifest items (spoken-squad: the AudioLLMs row schema) ->
    # tokenized_examples -> AudioCollate (features from the waveform, the slow full-window reference)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(fx["tok"]))
    items = {it.id: it for it in load_manifest(fx["root"] / f"{name}.jsonl")}
    if task == "spoken-squad":
        items = {k: spoken_squad({"context": {"array": it.waveform, "sampling_rate": 16000},
                                  "instruction": it.prompt_text.split("Question: ")[1], "answer": [it.target_text]})
                 for k, it in items.items()}
    stream = train.open_stream(None, 0)
    ids = [next(stream)["id"] for _ in range(8)]
    stream.close()
    exs, skipped = AE.tokenized_examples([items[i] for i in ids], tok, acfg, system=None, limit=32000)
    assert not skipped
    if task == "spoken-squad":  # the question is in the prompt, the answer is the target
        q = tok.encode("Question: " + items[ids[0]].prompt_text.split("Question: ")[1], add_special_tokens=False)
        p = list(exs[0].prompt)
        assert any(p[i:i + len(q)] == q for i in range(len(p)))
    bucket = next(b for b in train.buckets if b[0] >= max(e.S for e in exs) and b[1] >= max(e.T for e in exs))
    ref = AE.AudioCollate(acfg, "running")(exs, bucket)
    assert set(ref) <= set(got)
    for k, v in ref.items():
        if k == "features":
            np.testing.assert_allclose(got[k], v, atol=2e-6)
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.fixture(scope="module")
def straight(fx, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream-straight")
    assert main(["train", str(CONFIG), *overrides(fx, stream="lsbad", on_bad="skip", out_dir=out)]) == 0
    return out


def test_resume_from_the_saved_stream_state_is_exact(fx, straight, tmp_path):
    losses = _losses(straight)
    assert len(losses) == N and all(np.isfinite(losses))
    meta = CheckpointStore(straight / "checkpoints").restore_meta(K)
    host = meta[AB.STREAM_META_KEY]["hosts"][0]
    # 11 rows, one silent (read at least once in the first epoch): the first K x 8 examples took more rows, so
    # resuming at position step x batch would be off
    skipped = host["stream"]["skipped"].get("silent", 0)
    assert host["step"] == K and host["stream"]["rows"] == 11 and set(host["stream"]["skipped"]) == {"silent"}
    assert skipped >= 1 and host["stream"]["position"] == K * 8 + skipped and host["stream"]["examples"] == K * 8
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
    assert main(["train", str(CONFIG), *overrides(fx, stream="lsbad", on_bad="skip", out_dir=resumed),
                 f"checkpoint.restore_step={K}"]) == 0
    assert _losses(resumed) == losses[K:]
    _, ref, _, _ = restore_params(straight)
    _, got, _, step = restore_params(resumed)
    assert step == N and max_diff(ref, got) == 0.0


def _data(fx, *extra, stream="ls"):
    run = load_run_config(CONFIG, overrides(fx, stream=stream, out_dir="unused") + list(extra))
    return TD.build_data(run, TSt.resolve_model_config(run.model, run.audio)).train


def test_each_batch_takes_the_smallest_bucket_holding_its_rows(fx):
    train = _data(fx, "data.global_batch_size=1")
    stream = train.open_stream(None, 0)
    it = train.batches_from(0)
    seen = []
    for _ in range(10):
        b, ex = next(it), train.layout(next(stream))
        want = (56, 12) if ex.S <= 56 and ex.T <= 12 else (88, 24)
        assert (b["source"].shape[1], b["features"].shape) == (want[0], (1, 16, 200))
        seen.append(want)
    stream.close()
    assert set(seen) == {(56, 12), (88, 24)}, seen


def test_skipped_rows_are_in_the_saved_state_and_resume_follows_it(fx, tmp_path):
    """A silent row (bad audio, skipped) and rows over the only bucket (on_unfit=skip): the position is then not
    step x batch; resuming from the saved state yields what the uninterrupted stream yields."""
    rows = _rows(6)
    lines = []
    for i, (x, text, rid, _) in enumerate(rows):
        write_wav(tmp_path / f"{rid}.wav", np.zeros_like(x) if i == 2 else x, 16000)
        lines.append(json.dumps({"audio": f"{rid}.wav", "text": text, "id": rid}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["prepare-audio", str(tmp_path / "m.jsonl"), str(tmp_path / "bad")]) == 0
    extra = [f"audio.stream={{dir: {tmp_path / 'bad'}, on_bad_audio: skip}}", "data.global_batch_size=2",
             "data.buckets=[[60, 24]]"]
    a = _data(fx, *extra)
    it = a.batches_from(0)
    straight = [next(it) for _ in range(5)]
    b = _data(fx, *extra)
    it = b.batches_from(0)
    for _ in range(2):
        next(it)
    state = b.stream_state()
    host = state["hosts"][0]
    assert host["step"] == 2 and host["stream"]["skipped"].get("silent", 0) + host["unfit"] > 0
    assert host["stream"]["position"] > 2 * 2  # more rows read than examples batched
    c = _data(fx, *extra)
    c.restore_stream(json.loads(json.dumps(state)), 2)  # through JSON, as in the checkpoint meta
    it = c.batches_from(2)
    for want in straight[2:]:
        got = next(it)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    final = c.stream_state()["hosts"][0]
    assert final == a.stream_state()["hosts"][0] and final["step"] == 5 and final["unfit"] > 0
    with pytest.raises(Exception, match="fits no bucket"):
        it = _data(fx, *extra, "data.on_unfit=error").batches_from(0)
        [next(it) for _ in range(5)]
    with pytest.raises(Exception, match="silent"):
        it = _data(fx, *extra[1:], f"audio.stream={{dir: {tmp_path / 'bad'}, on_bad_audio: error}}").batches_from(0)
        [next(it) for _ in range(5)]
    with pytest.raises(Exception, match="of step 2, not 3"):
        c.restore_stream(state, 3)


@pytest.mark.parametrize("override,named", [
    ("audio.stream={dir: x, num_workers: -1}", "num_workers=-1"),
    ("audio.stream={dirr: x}", "audio.stream.dirr: unknown key (did you mean 'dir'?)"),
    ("audio.stream={dir: x, on_bad_audio: maybe}", "audio.stream.on_bad_audio"),
    ("data.task=speech-transcribe", "audio.stream is set but data.task='speech-transcribe'"),
    ("audio.stream={dir: /nonexistent/ls}", "/nonexistent/ls: expected a prepare_audio directory"),
    ("data.buckets=[[56, 24], [88, 12]]", "needs one bucket that covers all the others"),
])
def test_bad_stream_config_is_one_line(fx, override, named, capsys, tmp_path):
    assert main(["train", str(CONFIG), *overrides(fx, out_dir=tmp_path), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err


def test_two_hosts_agree_on_each_steps_bucket_and_save_both_states(fx):
    """Two hosts in lockstep (threads; the all-gathers faked with a barrier): disjoint shards, one shape per step =
    the smallest bucket holding both hosts' rows, and the gathered meta holds both states."""
    import threading

    from transformers import AutoTokenizer

    run = load_run_config(CONFIG, overrides(fx, out_dir="unused") + ["data.global_batch_size=2"])
    acfg = TSt.resolve_model_config(run.model, run.audio)
    tok = AutoTokenizer.from_pretrained(str(fx["tok"]))
    barrier, box = threading.Barrier(2), [None, None]

    def collective(h, reduce):
        def f(v):
            box[h] = v
            barrier.wait()
            out = reduce(list(box))
            barrier.wait()
            return out
        return f

    hosts = [AB.build_audio_stream(run, acfg, tok, host_index=h, host_count=2) for h in (0, 1)]
    for h, b in enumerate(hosts):
        b.agree = collective(h, lambda vs: np.max(vs, axis=0))
        b.gather = collective(h, list)
    shapes, metas = [[], []], [None, None]

    def work(h):
        it = hosts[h].batches_from(0)
        shapes[h] = [next(it)["source"].shape for _ in range(6)]
        metas[h] = hosts[h].stream_state()

    threads = [threading.Thread(target=work, args=(h,)) for h in (0, 1)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert shapes[0] == shapes[1] and len(shapes[0]) == 6
    # the reference: each host's own rows (shards of one shuffle: disjoint), the bucket of the pair's max S, T
    exs = []
    for h in (0, 1):
        s = hosts[h].open_stream(None, 0)
        exs.append([(e["id"], hosts[h].layout(e)) for e in (next(s) for _ in range(6))])
        s.close()
    assert not {i for i, _ in exs[0]} & {i for i, _ in exs[1]}
    for k in range(6):
        S, T = max(exs[0][k][1].S, exs[1][k][1].S), max(exs[0][k][1].T, exs[1][k][1].T)
        want = (56, 12) if S <= 56 and T <= 12 else (88, 24)
        assert shapes[0][k] == (1, want[0])
    small = [[e.S <= 56 and e.T <= 12 for _, e in exs[h]] for h in (0, 1)]
    assert any(a != b for a, b in zip(*small)), small  # some step needed the agreement
    assert metas[0] == metas[1] and [m["stream"]["host_index"] for m in metas[0]["hosts"]] == [0, 1]
    assert all(m["step"] == 6 and m["stream"]["position"] == 6 for m in metas[0]["hosts"])
