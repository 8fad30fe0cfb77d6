"""Shared test setup for tests/method: random tiny models and streaming examples (numpy-built, fast)."""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.method.decode import stream_decode
from proactive_jax.data.example import StreamExample
from proactive_jax.models.qwen import abstract_params, init_params
from tests.helpers import tiny_qwen2, tiny_qwen3

MAX_NEW = 10
T_PAD = 48  # the brute-force references pad every sequence to this length (one compilation)


def random_params(cfg, seed):
    """Random weights (normal(0.02), norms at one) built with numpy: much faster than flax init on CPU."""
    rng = np.random.default_rng(seed)

    def leaf(path, x):
        if getattr(path[-1], "key", None) == "weight":
            return jnp.ones(x.shape, x.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))


def sharpen(cfg, params):
    """Random weights give near-uniform logits and attention: scale them so decisions are well separated."""
    p = jax.tree_util.tree_map(lambda x: x, params)
    p["norm"]["weight"] = p["norm"]["weight"] * 30.0
    att = p["layers"]["self_attn"]
    if cfg.qk_norm:
        att["q_norm"]["weight"] = att["q_norm"]["weight"] * 2.0
        att["k_norm"]["weight"] = att["k_norm"]["weight"] * 2.0
    else:
        att["q_proj"]["kernel"] = att["q_proj"]["kernel"] * 8.0
        att["k_proj"]["kernel"] = att["k_proj"]["kernel"] * 8.0
    for k in ("v_proj", "o_proj"):
        att[k]["kernel"] = att[k]["kernel"] * 3.0
    for k in p["layers"]["mlp"]:
        p["layers"]["mlp"][k]["kernel"] = p["layers"]["mlp"][k]["kernel"] * 3.0
    return p


def random_examples(rng, count, vocab=97):
    """Mixed lengths: M 1..6, units of 1-3 tokens, prompt 1-4, end 1-2, header 1-3."""
    t = lambda n: tuple(int(x) for x in rng.integers(4, vocab, int(n)))
    out = []
    for _ in range(count):
        M = int(rng.integers(1, 7))
        out.append(StreamExample(prompt=t(rng.integers(1, 5)), units=tuple(t(rng.integers(1, 4)) for _ in range(M)),
                                 end=t(rng.integers(1, 3)), header=t(rng.integers(1, 4)), target=(3,)))
    return out


def text_setup(name: str) -> dict:
    """A sharpened random tiny model ("qwen2" | "qwen3"), six random examples, a word-start table and an eos
    id that the batch head emits (so stopping at eos is exercised)."""
    cfg = {"qwen2": tiny_qwen2, "qwen3": tiny_qwen3}[name]()
    params = sharpen(cfg, random_params(cfg, 1))
    rng = np.random.default_rng(7)
    exs = random_examples(rng, 6)
    ws = rng.random(cfg.vocab_size) < 0.7  # some tokens continue a word
    first = stream_decode(cfg, params, exs, "batch", MAX_NEW, eos_ids=[], word_starts=ws)
    return dict(cfg=cfg, params=params, exs=exs, ws=ws, eos=[int(first[0].tokens[3])])


AUDIO_ID, AUDIO_BOS, AUDIO_EOS = 90, 91, 92


def audio_setup(seconds=(0.5, 1.1, 1.7)) -> dict:
    """A tiny random Qwen2-Audio model (0.8 s encoder windows, chunks of 5 tokens = 200 ms) with the
    sharpened tiny Qwen2 decoder, tone+noise waveforms of ``seconds`` and their offline streaming examples
    (causal encoder, conv edge zero, running clamp: :func:`audio_embeddings`)."""
    from proactive_jax.audio import init_params as init_audio_params
    from proactive_jax.method.audio_stream import audio_embeddings, audio_example
    from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig

    text = tiny_qwen2()
    enc = EncoderConfig(num_mel_bins=16, d_model=24, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                        max_source_positions=40)  # 80 frames = 0.8 s windows, 20 tokens
    cfg = AudioModelConfig(text=text, encoder=enc, audio_token_index=AUDIO_ID, chunk_tokens=5)
    params = init_audio_params(cfg, 3)
    params["language_model"] = sharpen(text, random_params(text, 1))
    params["multi_modal_projector"]["linear"]["kernel"] = params["multi_modal_projector"]["linear"]["kernel"] * 4.0
    rng = np.random.default_rng(5)
    waves, exs = [], []
    for i, s in enumerate(seconds):
        t = np.arange(int(16000 * s)) / 16000
        wave = (0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) * (1 + t) + 0.01 * rng.standard_normal(t.size))
        waves.append(wave.astype(np.float32))
        emb = audio_embeddings(cfg, params, waves[-1])
        exs.append(audio_example([5, 6, AUDIO_BOS], emb, cfg.chunk, [AUDIO_EOS, 7], [8, 9], [3], AUDIO_ID))
    return dict(cfg=cfg, params=params, lm=params["language_model"], waves=waves, exs=exs)


def compiles(fn) -> list[str]:
    """Run ``fn`` and return the XLA compilations it caused (as ``jax.log_compiles`` reports them)."""
    seen = []

    class Catch(logging.Handler):
        def emit(self, rec):
            if "Finished XLA compilation" in rec.getMessage():
                seen.append(rec.getMessage())

    h, lg = Catch(), logging.getLogger("jax")
    lg.addHandler(h)
    try:
        with jax.log_compiles():
            fn()
    finally:
        lg.removeHandler(h)
    return seen


def brute_rows(ex, V, n: int, ys: list, phi: list, off: int = 0) -> dict:
    """The whole sequence a brute-force decoder recomputes at read count ``n`` with ``ys`` written at
    ``phi`` (method.md section 3): ids, positions, segment, index and the per-row visible-source limit.
    Header rows see V(phi(1)) (V(n) while nothing is written), the row holding y_i sees V(phi(i+1)), the
    last row (the one predicting now) V(n)."""
    sv, H = int(V[n]), len(ex.header)
    tl = H + len(ys)
    lim_rows = [V[phi[0]] if ys else V[n]] * H + [V[phi[i]] if i < len(ys) else V[n] for i in range(1, len(ys) + 1)]
    return dict(ids=list(ex.source)[:sv] + list(ex.header) + list(ys), pos=list(range(sv)) + [off + i for i in range(tl)],
                seg=[0] * sv + [1] * tl, idx=list(range(sv)) + list(range(tl)),
                lim=[0] * sv + [int(x) for x in lim_rows])


def scaled_params(cfg, seed):
    # larger weights than the 0.02 init so that logits and the KL are far from trivial
    p = init_params(cfg, seed)
    return jax.tree_util.tree_map(lambda x: x * 8.0 if x.ndim >= 2 else x + 0.1 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), p)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
