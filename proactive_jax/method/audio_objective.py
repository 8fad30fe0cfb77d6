"""The ProactiveLLM objective on audio: the encoder inside the same packed dual-view loss (method.md 7b).

An audio training example is a :class:`~proactive_jax.data.example.StreamExample` whose units are chunks of ``<|AUDIO|>``
placeholders (the prompt's tokens, then the audio tokens in order, then the end marker) plus the log-mel
features of its one encoder window. Inside the jitted loss the encoder (causal mask, ``conv_edge`` zero,
so every row sees exactly what streaming would give it) maps the features to embeddings, which replace
the table rows of the placeholder slots; then :func:`~.objective.packed_loss_sums` runs unchanged (read
schedules over chunk units, MSLM, SPSD). ``encoder="frozen"`` stops the gradient at the embeddings
(:data:`FROZEN_PARTS`, the audio tower and the projector, are constants; the trainer keeps them out of the
differentiated tree and out of the optimizer); ``"train"`` trains encoder, projector and decoder together.
The encoder mask (``causal`` default, ``block:K``, ``bidirectional``) and ``conv_edge`` are options of the loss.
"""

from __future__ import annotations

import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from proactive_jax.models import audio as audio_model
from proactive_jax.models.audio_config import AudioModelConfig
from proactive_jax.models.qwen import embed_ids
from proactive_jax.method.objective import ObjectiveConfig, combine, num_loss_tokens, pack_batch, packed_loss_sums
from proactive_jax.data.example import ExampleError, StreamExample

logger = logging.getLogger(__name__)
ENCODER_MODES = ("frozen", "train")
FROZEN_PARTS = audio_model.ENCODER_PARTS  # what encoder="frozen" holds constant: the tower and the projector
BATCH_KEYS = ("features", "valid_frames", "audio_tokens")  # what pack_audio_batch adds to pack_batch

def pack_audio_batch(examples: Sequence[StreamExample], features: Sequence[np.ndarray], valid_frames: Sequence[int],
                     bucket: tuple[int, int], batch_size: int | None = None, m_cap: int | None = None, *,
                     feature_shape: tuple[int, int] | None = None) -> dict:
    """:func:`~.objective.pack_batch` plus ``features`` [B, bins, frames], ``valid_frames`` [B] and
    ``audio_tokens`` [B] (placeholder slots, right after the prompt). ``feature_shape`` (bins, frames): needed
    when ``examples`` is empty (abstract batches of the planner); padding rows get zero features."""
    out = pack_batch(examples, bucket, batch_size, m_cap)
    b = out["source"].shape[0]
    shape = tuple(feature_shape) if feature_shape is not None else np.asarray(features[0]).shape
    out["features"] = np.zeros((b,) + shape, np.float32)
    out["valid_frames"] = np.ones((b,), np.int32)
    out["audio_tokens"] = np.zeros((b,), np.int32)
    for i, (ex, f, v) in enumerate(zip(examples, features, valid_frames)):
        n_tok = sum(len(u) for u in ex.units)
        _, n_out = audio_model.output_lengths(np.int64(v))
        if n_tok != int(n_out):
            raise ExampleError(f"example {i}: {n_tok} audio placeholder tokens but its features give {int(n_out)} "
                               f"tokens ({v} valid frames)")
        out["features"][i] = f
        out["valid_frames"][i] = v
        out["audio_tokens"][i] = n_tok
    return out


def audio_source_embeds(config: AudioModelConfig, params, batch, encoder: str = "train", mask: str = "causal",
                        conv_edge: str = "zero"):
    """[B, S_cap, D]: table rows of the source ids, encoder outputs at the audio slots."""
    if encoder not in ENCODER_MODES:
        raise ValueError(f"encoder={encoder!r}: expected one of {ENCODER_MODES}")
    emb = audio_model.encode_window(config, params, batch["features"], batch["valid_frames"], mask=mask,
                                    conv_edge=conv_edge)
    if encoder == "frozen":
        emb = jax.lax.stop_gradient(emb)
    src = batch["source"]
    table = embed_ids(config.text, params["language_model"], src).astype(jnp.float32)
    rel = jnp.arange(src.shape[1])[None, :] - batch["prompt_len"][:, None]
    is_audio = (rel >= 0) & (rel < batch["audio_tokens"][:, None])
    picked = jnp.take_along_axis(emb, jnp.clip(rel, 0, emb.shape[1] - 1)[..., None], axis=1)
    return jnp.where(is_audio[..., None], picked, table)


def audio_loss_sums(config: AudioModelConfig, obj: ObjectiveConfig, params, batch, key, encoder: str = "train",
                    mask: str = "causal", conv_edge: str = "zero"):
    """Loss sums ``{"batch", "mslm", "kl"}`` as :func:`~.objective.packed_loss_sums`, with the encoder inside
    (the trainer's step differentiates these; ``batch["row_id"]`` keys the read schedules as for text)."""
    src_emb = audio_source_embeds(config, params, batch, encoder, mask, conv_edge)
    text_batch = {k: v for k, v in batch.items() if k not in BATCH_KEYS}
    return packed_loss_sums(config.text, obj, params["language_model"], {**text_batch, "source_embeds": src_emb}, key)


def audio_loss_fn(config: AudioModelConfig, obj: ObjectiveConfig, params, batch, key, encoder: str = "train",
                  mask: str = "causal", conv_edge: str = "zero"):
    """``(total, aux)`` as :func:`~.objective.loss_fn`, with the encoder inside."""
    sums = audio_loss_sums(config, obj, params, batch, key, encoder, mask, conv_edge)
    count = num_loss_tokens(batch)
    total, terms = combine(sums, count, obj)
    return total, {**terms, "tokens": count}
