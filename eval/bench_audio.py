"""Speech throughput: the audio encoder (whole windows and chunk by chunk) and the streaming decode on
audio examples, on random weights of a given Qwen2-Audio shape.

    python eval/bench_audio.py                                  # tiny shape, CPU
    python eval/bench_audio.py --config configs/qwen2-audio-7b.json --dtype bfloat16 --seconds 10   # one GPU

Reports: encoder windows/s and audio-seconds/s (causal mask, conv_edge zero), chunk-encoder latency per
chunk, decode wall time per example and per READ chunk (batch and wait-k heads). Weights are drawn on the
device leaf by leaf (no host copy of a 7B model). Timings are wall clock after one warm-up call.
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.audio import encode, encode_chunk, init_encoder_state
from proactive_jax.method.audio_stream import audio_example
from proactive_jax.method.decode import stream_decode
from proactive_jax.models.audio import abstract_params
from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig, from_hf_dict_audio
from proactive_jax.models.config import ModelConfig


def tiny_config():
    enc = EncoderConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                        max_source_positions=1500)
    text = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, qkv_bias=True, qk_norm=False)
    return AudioModelConfig(text=text, encoder=enc, audio_token_index=500)


def random_params(cfg, seed=0):
    key = jax.random.PRNGKey(seed)
    leaves, tree = jax.tree_util.tree_flatten(abstract_params(cfg))
    keys = jax.random.split(key, len(leaves))
    out = [jax.jit(lambda k, s=leaf.shape: 0.02 * jax.random.normal(k, s, jnp.float32))(k) for k, leaf in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(tree, out)


def timed(fn, *a, reps=3):
    jax.block_until_ready(fn(*a))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn(*a))
    return (time.perf_counter() - t) / reps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None, help="a Qwen2-Audio config.json (default: a tiny shape)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length for the decode benchmark")
    p.add_argument("--chunk-tokens", type=int, default=25)
    p.add_argument("--max-new", type=int, default=16)
    a = p.parse_args()
    cfg = tiny_config() if a.config is None else from_hf_dict_audio(json.load(open(a.config)), dtype=a.dtype)
    cfg = cfg.replace(encoder=EncoderConfig(**{**cfg.encoder.__dict__, "dtype": a.dtype}),
                      text=cfg.text.replace(dtype=a.dtype), chunk_tokens=a.chunk_tokens)
    params = random_params(cfg)
    enc = cfg.encoder
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((a.batch, enc.num_mel_bins, enc.num_frames)).astype(np.float32)
    fam = np.ones((a.batch, enc.num_frames), np.int32)
    t_enc = timed(lambda: encode(cfg, params, feats, fam, mask="causal", conv_edge="zero"))
    window_s = enc.num_frames / 100
    K = cfg.chunk
    state = init_encoder_state(cfg, a.batch)
    chunk = feats[:, :, :4 * K]
    t_chunk = timed(lambda: encode_chunk(cfg, params, state, chunk)[1])
    n_tok = int(a.seconds * 25)
    emb = np.asarray(encode(cfg, params, feats[:1], fam[:1], mask="causal", conv_edge="zero"))[0, :min(n_tok, enc.num_tokens)]
    exs = [audio_example([1, 2, 3], emb, K, [4, 5], [6], [7], cfg.audio_token_index) for _ in range(a.batch)]
    res = {"device": str(jax.devices()[0]), "dtype": a.dtype,
           "encoder_window_s": t_enc, "encoder_audio_seconds_per_s": a.batch * window_s / t_enc,
           "chunk_encoder_ms_per_chunk": 1000 * t_chunk, "chunk_ms": K * 40}
    for head in ("batch", "wait-k:k=2"):
        run = lambda: stream_decode(cfg.text, params["language_model"], exs, head, a.max_new, eos_ids=[])  # noqa: E731
        run()
        t = time.perf_counter()
        out = run()
        dt = time.perf_counter() - t
        decisions = sum(len(r.writes) for r in out)
        res[f"decode_{head}_s_per_batch"] = dt
        res[f"decode_{head}_ms_per_decision"] = 1000 * dt / max(decisions, 1) * a.batch
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
