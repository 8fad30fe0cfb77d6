"""The decode loop's host side: checking examples and ids against the model, the shape bucket of a batch, and the
padded per-row arrays the jitted loop (:mod:`proactive_jax.method.decode`) and live sessions take."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from proactive_jax.data.example import StreamExample
from proactive_jax.method.shapes import bucket
from proactive_jax.models.config import ModelConfig



def check_ids(ids, vocab: int, what: str):
    if ids and (min(ids) < 0 or max(ids) >= vocab):
        bad = [t for t in ids if not 0 <= t < vocab][0]
        raise ValueError(f"{what}: token id {bad} is outside the model vocabulary [0, {vocab})")


def validate_examples(config: ModelConfig, examples, max_new_tokens: int, target_offset, max_source_len):
    V = config.vocab_size
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not (target_offset == "contiguous" or (isinstance(target_offset, (int, np.integer)) and target_offset >= 0)):
        raise ValueError(f"target_offset must be a non-negative int or 'contiguous', got {target_offset!r}")
    if len(examples) == 0:
        raise ValueError("stream_decode: no examples given")
    for i, ex in enumerate(examples):
        if not isinstance(ex, StreamExample):
            raise ValueError(f"examples[{i}] is a {type(ex).__name__}, expected a StreamExample")
        if len(ex.header) == 0:
            raise ValueError(f"examples[{i}].header is empty: decoding needs at least one header token "
                             "(its last row predicts the first answer token)")
        for part in ("prompt", "end", "header"):
            check_ids(getattr(ex, part), V, f"examples[{i}].{part}")
        for u, unit in enumerate(ex.units):
            check_ids(unit, V, f"examples[{i}].units[{u}]")
        if max_source_len is not None and ex.S > max_source_len:
            raise ValueError(f"examples[{i}]: source length {ex.S} (prompt+units+end) exceeds "
                             f"max_source_len={max_source_len}")
        off = ex.S if target_offset == "contiguous" else int(target_offset)
        last_pos = max(ex.S - 1, off + len(ex.header) + max_new_tokens - 1)
        if last_pos >= config.max_position_embeddings:
            raise ValueError(f"examples[{i}]: position {last_pos} (source length {ex.S}, target_offset {off}, "
                             f"header {len(ex.header)} + max_new_tokens {max_new_tokens}) exceeds the model's "
                             f"max_position_embeddings={config.max_position_embeddings}")


def vocab_table(values, vocab: int, what: str, fill: bool) -> np.ndarray:
    a = np.asarray(values).astype(bool).reshape(-1)
    if a.shape[0] > vocab:
        raise ValueError(f"{what} has {a.shape[0]} entries but the model vocabulary is {vocab}")
    # tokenizers often have fewer tokens than the (padded) embedding matrix: pad the rest
    return np.concatenate([a, np.full(vocab - a.shape[0], fill, bool)])


def shape_key(examples: Sequence[StreamExample]) -> tuple:
    """The shape bucket of a batch: (prompt cap, source cap, unit cap, header cap, M cap)."""
    return (bucket(max(len(e.prompt) for e in examples)),
            bucket(max(e.S for e in examples), 8),
            bucket(max(max(len(u) for u in e.units + (e.end,)) for e in examples)),
            bucket(max(len(e.header) for e in examples)),
            bucket(max(e.M for e in examples)))


def host_batch(examples: Sequence[StreamExample], B: int, max_new: int, target_offset, ws, eos, key=None):
    P_cap, S_cap, U, Hc, M_cap = shape_key(examples) if key is None else key
    src = np.zeros((B, S_cap), np.int32)
    vis = np.zeros((B, M_cap + 2), np.int32)
    M = np.zeros(B, np.int32)
    plen = np.zeros(B, np.int32)
    header = np.zeros((B, Hc), np.int32)
    hlen = np.ones(B, np.int32)
    off = np.zeros(B, np.int32)
    valid = np.zeros(B, bool)
    for b, e in enumerate(examples):
        s = e.source
        src[b, :len(s)] = s
        v = e.visible_counts()
        vis[b, :len(v)] = v
        vis[b, len(v):] = v[-1]
        M[b], plen[b], hlen[b], valid[b] = e.M, len(e.prompt), len(e.header), True
        header[b, :len(e.header)] = e.header
        off[b] = e.S if target_offset == "contiguous" else int(target_offset)
    batch = dict(src=src, vis=vis, M=M, plen=plen, header=header, hlen=hlen, off=off, valid=valid,
                 word_start=ws, eos=eos)
    return batch, P_cap, U
