"""``proactive-jax hf-check`` for Qwen2-Audio directories: logits against ``Qwen2AudioForConditionalGeneration``."""

from __future__ import annotations

import gc
import logging

import numpy as np

from proactive_jax.models.audio import forward_audio, output_lengths
from proactive_jax.models.audio_config import AudioModelConfig

logger = logging.getLogger(__name__)


def random_audio_inputs(config: AudioModelConfig, batch: int, length: int, seed: int):
    """Random log-mel-like features, one audio per row with different valid lengths, and input ids with
    ``<|audio_bos|>``-free text around one ``<|AUDIO|>`` placeholder per audio token."""
    enc = config.encoder
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((batch, enc.num_mel_bins, enc.num_frames)).astype(np.float32) * 0.5
    fam = np.zeros((batch, enc.num_frames), np.int32)
    for b in range(batch):
        fam[b, :max(4, enc.num_frames - b * (enc.num_frames // (2 * batch)) - 1)] = 1
    _, n_out = output_lengths(fam.sum(-1))
    text = [t for t in range(config.vocab_size) if t != config.audio_token_index]
    ids = np.zeros((batch, int(n_out.max()) + length), np.int64)
    for b, n in enumerate(n_out):
        words = rng.choice(text, ids.shape[1])
        ids[b] = words
        ids[b, 1:1 + n] = config.audio_token_index
    return feats, fam, ids


def hf_check_audio(args, config: AudioModelConfig, params, tol: float) -> int:
    feats, fam, ids = random_audio_inputs(config, args.batch, args.length, args.seed)
    ours = np.asarray(forward_audio(config, params, ids, feats, fam), np.float32)
    del params
    gc.collect()
    enc = config.encoder
    print(f"proactive_jax: qwen2_audio, encoder {enc.encoder_layers} layers d_model {enc.d_model}, decoder "
          f"{config.text.num_hidden_layers} layers hidden {config.text.hidden_size}, vocab {config.vocab_size}; "
          f"logits {list(ours.shape)} ({args.dtype} compute), max|logit| {float(np.abs(ours).max()):.6g}")
    try:
        import torch
        from transformers import Qwen2AudioForConditionalGeneration
    except ImportError as e:
        print(f"transformers comparison SKIPPED: torch/transformers not importable ({e})")
        return 0
    model = Qwen2AudioForConditionalGeneration.from_pretrained(args.dir, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(input_ids=torch.as_tensor(ids), input_features=torch.as_tensor(feats),
                    feature_attention_mask=torch.as_tensor(fam)).logits.float().numpy()
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    rel = diff / max(scale, 1e-30)
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"transformers (float32): max|logit| {scale:.6g}")
    print(f"max |logit diff| = {diff:.6g}  relative = {rel:.3g}  (tol {tol:g})  argmax agreement = {agree:.4f}")
    print("OK" if rel <= tol else "FAIL: difference above tolerance")
    return 0 if rel <= tol else 1
