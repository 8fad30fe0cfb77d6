"""The embedded demo's speech stage: a tiny causal audio encoder + a tiny Qwen2 decoder, trained together.

Data: synthetic tone-words (:mod:`.data.synthetic_audio`), tasks ``speech-lookup`` (Spoken-SQuAD-like)
and ``speech-transcribe`` (LibriSpeech-like). Model: :class:`~.models.audio_config.AudioModelConfig`
(Whisper-style encoder under the causal mask with ``conv_edge`` zero, projector, Qwen2 decoder), trained
from scratch with the ProactiveLLM objective (batch + MSLM + SPSD; the encoder inside the packed loss,
:mod:`.method.audio_objective`). Units are chunks of ``chunk_tokens`` encoder tokens (40 ms each).
Evaluation: the one decode loop with the batch, wait-k, entropy and attention heads; accuracy / WER,
RCO, AIL (in chunks) and the premature-write rate (a target word written before the chunk holding the
end of the spoken word it depends on was read).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from proactive_jax.data.synthetic_audio import EOS, speech_vocabulary

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class SpeechDemoConfig:
    enabled: bool = True
    # run the stage in a second process beside the demo's text stages (both share the two cores: the demo's wall time
    # drops from text + speech towards the longer of the two, docs/measurements.md: "The embedded default"); False: after them
    parallel: bool = True
    quick: bool = False
    seed: int = 0
    n_train: int = 1500  # per task
    n_test: int = 64  # per task
    steps: int = 1000  # the lowest final training loss of the trials that fit the budget (docs/measurements.md: speech)
    # the first steps with the batch loss only (then batch + MSLM + SPSD); measured worse here (batch loss 1.88 vs
    # 1.48 at step 300 with 250 warm-up steps vs none), so off by default
    pretrain_steps: int = 0
    lr: float = 2e-3
    batch_size: int = 32
    chunk_tokens: int = 5  # 200 ms
    max_seconds: float = 3.2
    num_mel_bins: int = 40
    kl_lambda: float = 0.1
    # "fan_in": conv kernels N(0, 1/sqrt(fan_in)) and the sinusoid position table x 0.2, so the log-mel content is
    # a large part of the encoder output at init; "default": models.audio.init_params as is (normal(0.02) convs:
    # two utterances' audio embeddings then differ by ~1%, the positions dominate and the stage does not learn)
    encoder_init: str = "fan_in"
    heads: tuple = ("batch", "wait-k:k=2", "wait-k:k=4", "wait-k:k=8", "entropy:tau=0.05", "entropy:tau=0.15",
                    "entropy:tau=0.3", "attention:tau=0.5", "attention:tau=0.7")
    quick_overrides: dict = dataclasses.field(default_factory=lambda: {
        "n_train": 600, "n_test": 32, "steps": 250,
        "heads": ("batch", "wait-k:k=2", "wait-k:k=6", "entropy:tau=0.1", "entropy:tau=0.3", "attention:tau=0.6")})

    @classmethod
    def from_dict(cls, d: dict | None) -> "SpeechDemoConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"speech: unknown keys {sorted(unknown)}")
        from proactive_jax.config import from_dict

        cfg = from_dict(cls, d, "speech")  # typed: "speech.steps: expected int ..." (heads: a list -> a tuple)
        if cfg.quick:
            q = dict(cfg.quick_overrides)
            if "heads" in q:
                q["heads"] = tuple(q["heads"])
            cfg = dataclasses.replace(cfg, **q)
        return cfg


def model_config(cfg: SpeechDemoConfig):
    """The run config's ``tiny-audio`` preset with this demo's mel bins, window (``max_seconds``) and chunk."""
    import copy

    from proactive_jax.models.audio_config import from_hf_dict_audio
    from proactive_jax.models.presets import MODEL_PRESETS

    preset = copy.deepcopy(MODEL_PRESETS["tiny-audio"])
    positions = int(cfg.max_seconds * 50)
    positions += positions % 2
    preset["audio_config"].update(num_mel_bins=cfg.num_mel_bins, max_source_positions=positions)
    preset["text_config"].update(vocab_size=len(speech_vocabulary()), eos_token_id=EOS)
    return from_hf_dict_audio(preset, source="speech demo").replace(chunk_tokens=cfg.chunk_tokens)


def build(items, cfg: SpeechDemoConfig, acfg):
    """Features [N, bins, frames], valid frames [N] and token-level StreamExamples (placeholder units), by the
    trainer's speech data code (:mod:`proactive_jax.training.audio_examples`)."""
    from proactive_jax.training.audio_examples import features_of, synthetic_speech_examples

    exs = synthetic_speech_examples(items, acfg)
    fv = [features_of(e.waveform, acfg, "running", e.id) for e in exs]
    return np.stack([f for f, _ in fv]), np.asarray([v for _, v in fv], np.int32), exs


def demo_init(params: dict, cfg: SpeechDemoConfig) -> dict:
    """The stage's encoder init (``cfg.encoder_init``, see SpeechDemoConfig) applied to ``init_params``' tree."""
    if cfg.encoder_init == "default":
        return params
    if cfg.encoder_init != "fan_in":
        raise ValueError(f"speech.encoder_init={cfg.encoder_init!r}: expected 'fan_in' or 'default'")
    rng = np.random.default_rng([cfg.seed, 7])
    tower = dict(params["audio_tower"])
    for name in ("conv1", "conv2"):
        k = np.asarray(tower[name]["kernel"])  # [3, in, out]
        tower[name] = {**tower[name], "kernel": rng.normal(0.0, 1.0 / np.sqrt(k.shape[0] * k.shape[1]),
                                                           k.shape).astype(np.float32)}
    pos = tower["embed_positions"]
    tower["embed_positions"] = {**pos, "embedding": (0.2 * np.asarray(pos["embedding"])).astype(np.float32)}
    return {**params, "audio_tower": tower}


def train(cfg: SpeechDemoConfig, acfg, feats, valid, exs, say=print):
    """Encoder + projector + decoder from scratch; one jitted step (batch + MSLM + SPSD, encoder train)."""
    import jax
    import jax.numpy as jnp
    import optax

    from proactive_jax.method.audio_objective import audio_loss_fn, pack_audio_batch
    from proactive_jax.method.objective import ObjectiveConfig
    from proactive_jax.models.audio import init_params

    obj = ObjectiveConfig(kl_lambda=cfg.kl_lambda, kl_topk=100, trailing_reads=True)
    obj_pre = ObjectiveConfig(w_mslm=0.0, kl_lambda=0.0, kl_topk=100, trailing_reads=True)
    params = jax.tree_util.tree_map(jnp.asarray, demo_init(init_params(acfg, cfg.seed), cfg))
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(1, cfg.steps // 20), cfg.steps, cfg.lr * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b2=0.98, weight_decay=0.01))
    state = opt.init(params)
    s_cap = 8 + max(ex.S for ex in exs)
    t_cap = max(ex.T for ex in exs)
    m_cap = max(ex.M for ex in exs)

    def make_step(o):
        @jax.jit
        def step(params, state, batch, key):
            (loss, aux), g = jax.value_and_grad(lambda p: audio_loss_fn(acfg, o, p, batch, key, "train"),
                                                has_aux=True)(params)
            upd, state = opt.update(g, state, params)
            return optax.apply_updates(params, upd), state, loss, aux
        return step

    step_full = make_step(obj)
    step_pre = make_step(obj_pre) if cfg.pretrain_steps > 0 else None

    rng = np.random.default_rng(cfg.seed)
    key = jax.random.PRNGKey(cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(cfg.steps):
        idx = rng.choice(len(exs), cfg.batch_size, replace=False)
        batch = pack_audio_batch([exs[j] for j in idx], feats[idx], valid[idx], (s_cap, t_cap), m_cap=m_cap)
        batch["row_id"] = (i * cfg.batch_size + np.arange(cfg.batch_size)).astype(np.int32)
        step = step_pre if i < cfg.pretrain_steps else step_full
        params, state, loss, aux = step(params, state, batch, jax.random.fold_in(key, i))
        if (i + 1) % max(1, cfg.steps // 5) == 0 or i + 1 == cfg.steps:
            say(f"      step {i + 1}: loss {float(loss):.4f} (batch {float(aux['batch']):.4f}, mslm "
                f"{float(aux['mslm']):.4f}, kl {float(aux['kl']):.4f}) {time.perf_counter() - t0:.0f}s, "
                f"{time.process_time() - c0:.0f} CPU s")
    return params


def evidence_chunks(item, K: int) -> list[int]:
    """For each target word, the read count (chunks) after which the evidence has been heard."""
    from proactive_jax.training.audio_examples import audio_tokens_for

    return [-(-audio_tokens_for(item.word_ends[w]) // K) for w in item.evidence_words]


def transcript(words) -> str:
    """The words as scored: each tone-word without its syllable hyphens (``ka-mo`` -> ``kamo``), so the WER
    normaliser, which turns punctuation into spaces, counts one word as one word, not as 2-3 syllables."""
    return " ".join(w.replace("-", "") for w in words)


def evaluate(cfg: SpeechDemoConfig, acfg, params, items, feats, valid, exs) -> list[dict]:
    """Every head on the test items: quality, RCO, AIL (chunks), premature-write rate, AIL in seconds."""
    from proactive_jax.evaluation import metrics
    from proactive_jax.method.audio_stream import AudioStreamExample
    from proactive_jax.method.decode import stream_decode
    from proactive_jax.models.audio import encode, output_lengths

    fam = (np.arange(feats.shape[2])[None] < valid[:, None]).astype(np.int32)
    emb = np.asarray(encode(acfg, params, feats, fam, mask="causal", conv_edge="zero"))
    _, n_out = output_lengths(valid)
    aex = [AudioStreamExample(prompt=e.prompt, units=e.units, end=e.end, header=e.header, target=e.target,
                              unit_embeds=emb[i, :int(n_out[i])], seconds_per_unit=acfg.chunk * 0.04)
           for i, e in enumerate(exs)]
    vocab = speech_vocabulary()
    rows = []
    for head in cfg.heads:
        res = stream_decode(acfg.text, params["language_model"], aex, head, 10, eos_ids=[EOS])
        hyps, refs, rco, ail, early, written = [], [], [], [], 0, 0
        for it, ex, r in zip(items, aex, res):
            words = [vocab[t] for t in r.tokens if t != EOS]
            hyps.append(transcript(words))
            refs.append(transcript(it.target_words))
            if len(r.phi):
                rco.append(metrics.rco(r.phi, ex.M))
                ail.append(metrics.ail(r.phi, ex.M))
            ev = evidence_chunks(it, acfg.chunk)
            for j, n in enumerate(r.phi[:len(ev)]):
                if j < len(words):
                    written += 1
                    early += int(n < ev[j])
        task = items[0].task
        quality = (metrics.wer(hyps, refs) if task == "speech-transcribe"
                   else 100.0 * float(np.mean([h == g for h, g in zip(hyps, refs)])))
        rows.append({"head": head, "quality": quality, "metric": "WER" if task == "speech-transcribe" else "acc",
                     "rco": float(np.mean(rco)) if rco else float("nan"),
                     "ail": float(np.mean(ail)) if ail else float("nan"),
                     "ail_s": float(np.mean(ail)) * acfg.chunk * 0.04 if ail else float("nan"),
                     "premature": early / max(written, 1)})
    return rows


def table(task: str, rows: list[dict]) -> str:
    m = rows[0]["metric"]
    lines = [f"| head | {m} | RCO | AIL (chunks) | AIL (s) | premature writes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['quality']:.1f} | {r['rco']:.2f} | {r['ail']:.2f} | {r['ail_s']:.2f} | "
                     f"{100 * r['premature']:.1f}% |")
    return "\n".join(lines)


def check_speech_targets(results: dict) -> list[dict]:
    """The speech stage's targets: lookup keeps >= 95% of batch accuracy at RCO <= 0.8, wait-k clearly worse;
    transcribe: proactive WER within 10% relative of batch at lower AIL than the nearest wait-k."""
    out = []
    look = results.get("speech-lookup")
    if look:
        batch = next(r for r in look if r["head"] == "batch")["quality"]
        pro = [r for r in look if r["head"].startswith(("entropy", "attention")) and r["rco"] <= 0.8]
        best = max(pro, key=lambda r: r["quality"], default=None)
        wk = [r for r in look if r["head"].startswith("wait-k") and r["rco"] <= 0.8]
        best_wk = max(wk, key=lambda r: r["quality"], default=None)
        # a batch model near chance (1/4: the category is in the prompt, 4 words per category) makes the ratio
        # meaningless
        learnt = batch >= 50.0
        ok = learnt and best is not None and best["quality"] >= 0.95 * batch
        out.append({"target": "speech-lookup: proactive >= 95% of batch accuracy at RCO <= 0.8 (batch >= 50%)",
                    "pass": ok,
                    "batch": batch, "proactive": best and (best["head"], best["quality"], best["rco"]),
                    "wait-k": best_wk and (best_wk["head"], best_wk["quality"], best_wk["rco"])})
        out.append({"target": "speech-lookup: wait-k clearly worse at RCO <= 0.8",
                    "pass": bool(learnt and best and (best_wk is None or best_wk["quality"] < best["quality"] - 5))})
    tr = results.get("speech-transcribe")
    if tr:
        batch = next(r for r in tr if r["head"] == "batch")["quality"]
        pro = [r for r in tr if r["head"].startswith(("entropy", "attention")) and r["quality"] <= batch * 1.1 + 1e-9]
        best = min(pro, key=lambda r: r["ail"], default=None)
        wk = [r for r in tr if r["head"].startswith("wait-k")]
        nearest = min(wk, key=lambda r: abs(r["quality"] - (best or {"quality": batch})["quality"]), default=None)
        # as for lookup, a batch model that has not learnt the task (a collapsed model writes the same few words
        # under every head) makes the comparison meaningless: at least half the words right
        learnt = batch <= 50.0
        ok = learnt and best is not None and nearest is not None and best["ail"] < nearest["ail"]
        out.append({"target": "speech-transcribe: proactive WER within 10% rel. of batch at lower AIL than the "
                              "nearest wait-k (batch WER <= 50)", "pass": ok, "batch_wer": batch,
                    "proactive": best and (best["head"], best["quality"], best["ail"]),
                    "nearest_wait_k": nearest and (nearest["head"], nearest["quality"], nearest["ail"])})
    return out


def run_speech_stage(settings: dict | None, out_dir: str | Path, say=print) -> dict:
    """Data -> train -> evaluate -> tables; writes ``speech_results.json`` and ``speech_table.md``."""
    from proactive_jax.data.synthetic_audio import SPEECH_TASKS, make_speech_task

    cfg = SpeechDemoConfig.from_dict(settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    acfg = model_config(cfg)
    say(f"[speech 1/3] data: synthetic tone-words, {cfg.n_train} train / {cfg.n_test} test per task, chunks of "
        f"{acfg.chunk} encoder tokens ({acfg.chunk * 40} ms)")
    train_items = [it for t in SPEECH_TASKS for it in make_speech_task(t, cfg.n_train, cfg.seed, "train", cfg.max_seconds)]
    feats, valid, exs = build(train_items, cfg, acfg)
    timings = {"data": time.perf_counter() - t0}
    say(f"[speech 2/3] train: causal encoder + Qwen2 decoder, batch + MSLM + SPSD ({cfg.steps} steps)")
    t1, c1 = time.perf_counter(), time.process_time()
    params = train(cfg, acfg, feats, valid, exs, say)
    timings["train"] = time.perf_counter() - t1
    timings["train_cpu"] = time.process_time() - c1
    timings["steps_per_s"] = cfg.steps / timings["train"]
    say(f"[speech 3/3] evaluate: {', '.join(cfg.heads)}")
    t2 = time.perf_counter()
    results, tables = {}, []
    for task in SPEECH_TASKS:
        items = make_speech_task(task, cfg.n_test, cfg.seed, "test", cfg.max_seconds)
        f, v, e = build(items, cfg, acfg)
        results[task] = evaluate(cfg, acfg, params, items, f, v, e)
        tables.append(f"### {task}\n\n{table(task, results[task])}")
        say(f"\n{task}\n{table(task, results[task])}")
    timings["eval"] = time.perf_counter() - t2
    targets = check_speech_targets(results)
    for tgt in targets:
        say(f"  [{'PASS' if tgt['pass'] else 'MISS'}] {tgt['target']}: "
            + json.dumps({k: v for k, v in tgt.items() if k not in ("target", "pass")}, default=str))
    timings["total"] = time.perf_counter() - t0
    timings["total_cpu"] = time.process_time() - c0  # user + sys of this process, all threads
    say(f"speech stage: {timings['total']:.0f}s wall, {timings['total_cpu']:.0f} CPU s (data {timings['data']:.0f}s, "
        f"train {timings['train']:.0f}s = {timings['steps_per_s']:.2f} steps/s, {timings['train_cpu']:.0f} CPU s, "
        f"eval {timings['eval']:.0f}s)")
    summary = {"config": dataclasses.asdict(cfg), "timings_s": timings, "results": results, "targets": targets}
    (out / "speech_results.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "speech_table.md").write_text("\n\n".join(tables) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------
# The stage in a second process (the demo runs it beside its text stages)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SpeechProcess:
    proc: subprocess.Popen
    out_dir: Path
    log_path: Path


def start_speech_process(settings: dict | None, out_dir: str | Path) -> SpeechProcess:
    """Start :func:`run_speech_stage` in a child Python (``python -m proactive_jax.demo.speech``); its printed
    lines go to ``out_dir/speech.log``. The settings are validated here first, so a wrong key fails at once."""
    SpeechDemoConfig.from_dict(settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speech_results.json").unlink(missing_ok=True)  # never report a previous run's results
    log_path = out / "speech.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-u", "-m", __name__, json.dumps(dict(settings or {})), str(out)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return SpeechProcess(proc, out, log_path)


def stop_speech_process(job: SpeechProcess) -> None:
    """Terminate a still-running child (the demo was interrupted or failed)."""
    if job.proc.poll() is None:
        job.proc.terminate()
        try:
            job.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()


def finish_speech_process(job: SpeechProcess, say=print) -> dict:
    """Wait for the child, replay its printed lines through ``say`` (so the demo's output reads as if the stage
    had run in place) and return its summary (``speech_results.json``). A failed child raises RuntimeError
    naming its exit status and log."""
    t0 = time.perf_counter()
    rc = job.proc.wait()
    lines = job.log_path.read_text(errors="replace").splitlines()
    if rc != 0 or not (job.out_dir / "speech_results.json").exists():
        tail = next((ln for ln in reversed(lines) if ln.strip()), "")
        raise RuntimeError(f"speech stage: the child process exited with status {rc} ({tail.strip()}); "
                           f"full log: {job.log_path}")
    for ln in lines:
        if not ln.startswith(("WARNING:", "Failed to find host bounds")):  # libtpu's probe noise, if installed
            say(ln)
    summary = json.loads((job.out_dir / "speech_results.json").read_text())
    summary["timings_s"]["waited"] = time.perf_counter() - t0
    return summary


def _main(argv) -> int:
    settings, out = json.loads(argv[0]), argv[1]
    run_speech_stage(settings, out, say=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
