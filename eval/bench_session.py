"""Live-session latency: per-push and per-decision wall-clock of ``SessionBatch`` vs ``stream_decode``.

    python eval/bench_session.py [--models tiny,0.5b] [--batch-sizes 1,8] [--units 8] [--max-new 12]

For each model and batch size B, the same B random streaming examples are decoded (greedy, the same head)
twice, and both must give the same tokens and read schedules:

- ``stream_decode``: the whole examples known in advance, one jitted ``lax.while_loop`` (one iteration =
  one decision of every still-active example); per-decision time = loop time / iterations.
- a ``SessionBatch`` of B rows, driven like a server: unit k of every example is pushed together
  (``push``), each example finished after its last unit. One step = one decision of every advancing row
  (the same jitted ``decision_step`` the loop runs, plus host dispatch and the read-back of the decision).

Reported per (model, B): push latency median / p99 (one ``push`` call = every step it triggers), step
latency median / p99, and the overhead = session time per step / stream_decode time per iteration (goal:
<= 1.5x at B = 8), plus the end-to-end ratio. Compilation is excluded (a warm-up run of both first); the
fastest of ``--repeats`` runs is reported. Models: ``tiny`` (2 layers, hidden 64) and ``0.5b`` (the
Qwen2.5-0.5B shape: 24 layers, hidden 896, vocab 151936; random weights, float32).

``--audio``: the same for live AUDIO sessions (Qwen2-Audio configs). Every row's waveform (random tones,
``--seconds`` long, lengths staggered by row) is pushed as raw 16 kHz pieces of ``--piece-ms`` (default: one
chunk), so a push pays the running-clamp log-mel of its frames, the chunk encoder (conv edge + KV cache
carried) and the decisions; the reference is ``stream_decode`` on the offline ``AudioStreamExample`` (the
embeddings computed beforehand, as ``eval`` does), and both must agree token for token. Models: ``tiny``
(encoder 2 layers x 64, 80 mel bins, 30 s windows; the tiny decoder above as a Qwen2: no q/k norm, qkv bias)
and ``0.5b`` (a Whisper-tiny-shaped encoder: 4 layers x 384, 6 heads, 80 bins, 30 s windows; the Qwen2.5-0.5B
decoder). Chunks of ``--chunk-tokens`` encoder tokens (5 = 200 ms by default). Columns: push latency (what a
caller waits for one piece: features + chunk encoder + every decision it triggers), the chunk encoder alone
(``encode_rows`` on all B rows, the fastest of 10 calls; it runs asynchronously inside a push), the session's
time per decision (push time / decisions, encoding included) against ``stream_decode``'s per iteration
(encoding excluded: done beforehand), and the end-to-end ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from proactive_jax.method.decode import stream_decode  # noqa: E402
from proactive_jax.method.session_batch import SessionBatch  # noqa: E402
from proactive_jax.data.example import StreamExample  # noqa: E402
from proactive_jax.models.config import ModelConfig  # noqa: E402
from proactive_jax.models.qwen import abstract_params  # noqa: E402

MODELS = {
    "tiny": dict(model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, qkv_bias=False, o_bias=False,
                 qk_norm=True, tie_word_embeddings=False, max_position_embeddings=1024),
    "0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, head_dim=64, qkv_bias=True,
                 o_bias=False, qk_norm=False, tie_word_embeddings=True, max_position_embeddings=32768),
}


def random_params(cfg, seed=0, logit_scale=30.0):
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if getattr(path[-1], "key", None) == "weight":
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.standard_normal(x.shape, np.float32) * 0.02, x.dtype)

    p = jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))
    p["norm"]["weight"] = p["norm"]["weight"] * logit_scale  # peaked logits: no argmax near-ties
    return p


def random_examples(rng, count, vocab, units):
    t = lambda n: tuple(int(x) for x in rng.integers(4, vocab, int(n)))  # noqa: E731
    return [StreamExample(prompt=t(rng.integers(6, 12)), units=tuple(t(rng.integers(1, 4)) for _ in range(units)),
                          end=t(2), header=t(4), target=(3,)) for _ in range(count)]


def run_stream(cfg, params, exs, head, max_new):
    t0 = time.perf_counter()
    res = stream_decode(cfg, params, exs, head, max_new, eos_ids=[])
    return time.perf_counter() - t0, res


def run_session(cfg, params, exs, head, max_new, fused=True):
    """Push unit k of every example together; returns (push times, step times, results)."""
    P = max(len(e.prompt) for e in exs)
    sb = SessionBatch(cfg, params, head, prompts=[e.prompt for e in exs], ends=[e.end for e in exs],
                      headers=[e.header for e in exs], max_new_tokens=max_new, eos_ids=[],
                      max_source_len=max(e.S for e in exs), unit_capacity=4, prompt_capacity=P, fused=fused)
    pushes = []
    for k in range(max(e.M for e in exs)):
        t0 = time.perf_counter()
        sb.push([e.units[k] if k < e.M else None for e in exs])
        ending = [i for i, e in enumerate(exs) if e.M == k + 1]
        if ending:
            sb.finish(ending)
        pushes.append(time.perf_counter() - t0)
    steps = sb.step_seconds
    return pushes, steps, [sb.result(i) for i in range(len(exs))]


AUDIO_ENCODERS = {
    "tiny": dict(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                 max_source_positions=1500),
    "0.5b": dict(num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
                 max_source_positions=1500),
}
AUDIO_ID = {"tiny": 500, "0.5b": 151646}


def audio_model(name, chunk_tokens):
    from proactive_jax.audio import init_params as init_audio_params
    from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig

    text = ModelConfig(**{**MODELS[name], "model_type": "qwen2", "qk_norm": False, "qkv_bias": True})  # Qwen2 decoder
    cfg = AudioModelConfig(text=text, encoder=EncoderConfig(**AUDIO_ENCODERS[name]), audio_token_index=AUDIO_ID[name],
                           chunk_tokens=chunk_tokens)
    params = init_audio_params(cfg, 3)
    params["language_model"] = random_params(text)
    return cfg, params


def audio_examples(cfg, params, rng, count, seconds):
    """Tone + noise waveforms (row i: ``seconds`` * (1 - 0.1 i % 0.5) long) and their offline examples."""
    from proactive_jax.method.audio_stream import audio_embeddings, audio_example

    t = lambda n: tuple(int(x) for x in rng.integers(4, 400, int(n)))  # noqa: E731 (ids below every audio id)
    waves, exs = [], []
    for i in range(count):
        n = int(16000 * seconds * (1 - 0.1 * (i % 5)))
        x = np.arange(n) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (250 + 90 * i) * x) + 0.02 * rng.standard_normal(n)).astype(np.float32)
        waves.append(wave)
        emb = audio_embeddings(cfg, params, wave)
        exs.append(audio_example(t(rng.integers(6, 12)), emb, cfg.chunk, t(2), t(4), (3,), cfg.audio_token_index))
    return waves, exs


def run_audio_session(cfg, params, waves, exs, head, max_new, piece, fused=True):
    """Push piece k of every row's waveform together; each row finished after its last piece."""
    P = max(len(e.prompt) for e in exs)
    sb = SessionBatch(cfg, params, head, prompts=[e.prompt for e in exs], ends=[e.end for e in exs],
                      headers=[e.header for e in exs], max_new_tokens=max_new, eos_ids=[],
                      max_source_len=max(e.S for e in exs), prompt_capacity=P, fused=fused)
    pieces = [[w[k:k + piece] for k in range(0, w.size, piece)] for w in waves]
    pushes = []
    for k in range(max(map(len, pieces))):
        t0 = time.perf_counter()
        sb.push([p[k] if k < len(p) else None for p in pieces])
        ending = [i for i, p in enumerate(pieces) if len(p) == k + 1]
        if ending:
            sb.finish(ending)
        pushes.append(time.perf_counter() - t0)
    return pushes, list(sb.step_seconds), [sb.result(i) for i in range(len(exs))]


def main_audio(a):
    print(f"device: {jax.devices()[0].platform} ({platform.machine()}, {os.cpu_count()} cores), AUDIO sessions, "
          f"head {a.head}, {a.seconds} s utterances, chunks of {a.chunk_tokens} tokens ({40 * a.chunk_tokens} ms), "
          f"max_new {a.max_new}")
    print("| model | B | piece ms | push p50 ms | push p99 ms | chunk encoder ms (B rows) | session ms/decision "
          "| stream_decode ms/iter | ratio per decision | end-to-end ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        cfg, params = audio_model(name, a.chunk_tokens)
        piece = int(16 * (a.piece_ms or 40 * a.chunk_tokens))
        for B in [int(b) for b in a.batch_sizes.split(",")]:
            waves, exs = audio_examples(cfg, params, np.random.default_rng(B), B, a.seconds)
            lm = params["language_model"]
            stream = lambda: run_stream(cfg.text, lm, exs, a.head, a.max_new)  # noqa: E731
            session = lambda: run_audio_session(cfg, params, waves, exs, a.head, a.max_new, piece)  # noqa: E731
            stream(), session()  # warm-up (compile)
            best_s = best_l = None
            for _ in range(a.repeats):
                t, res = stream()
                best_s = (t, res) if best_s is None or t < best_s[0] else best_s
                run = session()
                best_l = run if best_l is None or sum(run[0]) < sum(best_l[0]) else best_l
            t, res = best_s
            pushes, steps, live = best_l
            for r, lv in zip(res, live):
                assert np.array_equal(r.tokens, lv.tokens) and np.array_equal(r.phi, lv.phi), "session != stream"
            per_iter = t / max(len(r.writes) for r in res)
            per_decision = sum(pushes) / len(steps)
            enc_ms = 1e3 * encoder_seconds(cfg, params, B)
            print(f"| {name} | {B} | {piece / 16:.0f} | {pct(pushes, 50):.2f} | {pct(pushes, 99):.2f} | {enc_ms:.2f} | "
                  f"{1e3 * per_decision:.2f} | {1e3 * per_iter:.2f} | {per_decision / per_iter:.2f}x | "
                  f"{sum(pushes) / t:.2f}x |", flush=True)


def encoder_seconds(cfg, params, B, reps=10):
    """The live chunk encoder (``audio_session.encode_rows``) on B rows: the fastest of ``reps`` calls."""
    from proactive_jax.method.audio_session import encode_rows, init_rows_state

    state = init_rows_state(cfg, B)
    mel = jnp.zeros((B, 4 * cfg.chunk, cfg.encoder.num_mel_bins), jnp.float32)
    go, reset = jnp.ones(B, bool), jnp.zeros(B, bool)
    best = float("inf")
    for r in range(reps + 1):
        t0 = time.perf_counter()
        state, emb = encode_rows(cfg, params, state, mel, go, reset)
        jax.block_until_ready(emb)
        best = min(best, time.perf_counter() - t0) if r else best  # call 0 compiles
    return best


def pct(xs, q):
    return 1e3 * float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,0.5b")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=12)
    ap.add_argument("--head", default="wait-k:k=2")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each; the fastest is reported")
    ap.add_argument("--modes", default="fused,stepwise",
                    help="session modes: fused (one device loop per push) and/or stepwise (one dispatch per step)")
    ap.add_argument("--audio", action="store_true", help="live audio sessions (Qwen2-Audio shapes), see above")
    ap.add_argument("--seconds", type=float, default=3.0, help="--audio: utterance length of row 0")
    ap.add_argument("--chunk-tokens", type=int, default=5, help="--audio: encoder tokens per chunk (40 ms each)")
    ap.add_argument("--piece-ms", type=float, default=None, help="--audio: ms of audio per push (default: one chunk)")
    a = ap.parse_args()
    if a.audio:
        return main_audio(a)
    print(f"device: {jax.devices()[0].platform} ({platform.machine()}, {os.cpu_count()} cores), "
          f"head {a.head}, units {a.units}, max_new {a.max_new}")
    print("| model | mode | B | push p50 ms | push p99 ms | step p50 ms | step p99 ms | stream_decode ms/iter "
          "| overhead per decision | end-to-end ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models.split(","):
        cfg = ModelConfig(**MODELS[name])
        params = random_params(cfg)
        for B in [int(b) for b in a.batch_sizes.split(",")]:
            exs = random_examples(np.random.default_rng(B), B, cfg.vocab_size, a.units)
            modes = [m == "fused" for m in a.modes.split(",")]
            run_stream(cfg, params, exs, a.head, a.max_new)  # warm-up (compile)
            for fused in modes:
                run_session(cfg, params, exs, a.head, a.max_new, fused)
            best_s, best_l = None, {m: None for m in modes}
            for _ in range(a.repeats):  # interleaved, so load changes hit both alike
                t, res = run_stream(cfg, params, exs, a.head, a.max_new)
                best_s = (t, res) if best_s is None or t < best_s[0] else best_s
                for m in modes:
                    run = run_session(cfg, params, exs, a.head, a.max_new, m)
                    best_l[m] = run if best_l[m] is None or sum(run[1]) < sum(best_l[m][1]) else best_l[m]
            t, res = best_s
            iters = max(len(r.writes) for r in res)
            per_iter = t / iters
            for m in modes:
                pushes, steps, live = best_l[m]
                for r, lv in zip(res, live):
                    assert np.array_equal(r.tokens, lv.tokens) and np.array_equal(r.phi, lv.phi), "session != stream"
                per_step = float(np.mean(steps))
                print(f"| {name} | {'fused' if m else 'stepwise'} | {B} | {pct(pushes, 50):.2f} | {pct(pushes, 99):.2f} | {pct(steps, 50):.2f} | "
                      f"{pct(steps, 99):.2f} | {1e3 * per_iter:.2f} | {per_step / per_iter:.2f}x | "
                      f"{sum(pushes) / t:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
