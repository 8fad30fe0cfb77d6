"""Hugging Face checkpoint export (:func:`save_pretrained`): config.json, generation_config.json, the tokenizer and
the tensors streamed into ``.safetensors`` files one at a time (per-tensor CRC-32), in a temporary directory that
replaces the target only once everything is written. Walks the same tensor table as the loader (:mod:`.hf_names`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from proactive_jax.models.config import ModelConfig, to_hf_dict
from proactive_jax.models.hf import (DEFAULT_MAX_SHARD_SIZE, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, TOKENIZER_FILES)
from proactive_jax.models.kinds import is_audio, text_config
from proactive_jax.models.hf_names import (TensorSpec, _flatten, _get, _table, tensor_layout)
from proactive_jax.models.safetensors_io import (_ST_NAME, CheckpointError, _np_dtypes, parse_size, remove_stale, write_safetensors)

log = logging.getLogger(__name__)


def _check_params(shapes: dict[tuple[str, ...], tuple[int, ...]], params) -> None:
    got = dict(_flatten(params))
    missing = sorted(set(shapes) - set(got))
    extra = sorted(set(got) - set(shapes))
    if missing or extra:
        raise CheckpointError(f"params do not match the config: missing {['/'.join(p) for p in missing]}, "
                              f"unexpected {['/'.join(p) for p in extra]}")
    for p, shape in shapes.items():
        actual = tuple(np.shape(got[p]))
        if actual != shape:
            raise CheckpointError(f"param {'/'.join(p)} has shape {list(actual)}, expected {list(shape)}")


def _hf_array(params, spec: TensorSpec, layer: int | None, out_dtype: np.dtype) -> np.ndarray:
    """One HF tensor as a C-contiguous little-endian numpy array (a device array is sliced on device)."""
    leaf = _get(params, spec.path)
    x = leaf[layer] if spec.per_layer else leaf
    x = np.asarray(x)
    if spec.transpose:
        x = x.T
    return np.ascontiguousarray(x.astype(out_dtype, copy=False))


def _generation_config(config: ModelConfig, tokenizer_dir: Path | None) -> dict:
    config = text_config(config)
    gen: dict[str, Any] = {}
    src = tokenizer_dir / "generation_config.json" if tokenizer_dir else None
    if src is not None and src.is_file():
        gen = json.loads(src.read_text())
    for key, value in (("bos_token_id", config.bos_token_id),
                       ("eos_token_id", list(config.eos_ids) if isinstance(config.eos_token_id, tuple)
                        else config.eos_token_id),
                       ("pad_token_id", config.pad_token_id)):
        if value is not None:
            gen.setdefault(key, value)
    return gen


def _split_shards(order, itemsize: int, limit: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive tensors grouped into shards of at most ``limit`` bytes (a larger tensor stands alone)."""
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in order:
        n = math.prod(shape) * itemsize
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def _tokenizer_files(tok_dir: Path | None) -> list[Path]:
    if tok_dir is None:
        return []
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"{tok_dir}: tokenizer directory does not exist")
    files = [tok_dir / n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]
    if not files:
        raise FileNotFoundError(f"{tok_dir}: no tokenizer files found (looked for {', '.join(TOKENIZER_FILES)})")
    return files


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise FileExistsError(f"{out}: exists, is not empty and holds no config.json; refusing to replace it")


def save_pretrained(config: ModelConfig, params, out_dir: str | Path, tokenizer_dir: str | Path | None = None, *,
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, dtype: str = "float32",
                    layout: str = "v4") -> Path:
    """Write a Hugging Face checkpoint directory that ``transformers`` loads.

    Writes ``config.json`` (:func:`~proactive_jax.models.config.to_hf_dict`, ``layout`` "v4" or "v5"), the
    weights as ``model.safetensors`` or, above ``max_shard_size``, ``model-0000i-of-0000n.safetensors``
    plus ``model.safetensors.index.json`` (metadata ``{"format": "pt"}``), ``generation_config.json``
    (the one in ``tokenizer_dir`` if any, else bos/eos/pad from the config), and the tokenizer files
    found in ``tokenizer_dir``. ``dtype`` is the stored dtype ("float32", "bfloat16", "float16").
    A tied Qwen2-Audio model also writes ``language_model.lm_head.weight`` (a copy of the embeddings) with
    ``text_config.tie_word_embeddings: true``: transformers 5 never ties Qwen2-Audio and would otherwise
    initialize its head randomly; transformers 4 and :func:`load_pretrained` tie it again.

    Everything is written to a temporary sibling directory first, which then replaces ``out_dir``; a
    failure leaves an existing checkpoint at ``out_dir`` untouched. An existing non-empty ``out_dir``
    that holds no ``config.json`` is refused rather than replaced. ``params`` may hold numpy or
    (fully addressable) jax arrays; returns ``out_dir``.
    """
    if dtype not in _ST_NAME:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(_ST_NAME)}")
    out = Path(out_dir)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    tok_files = _tokenizer_files(tok_dir)
    _check_out_dir(out)
    layout_ = tensor_layout(config)
    _check_params({spec.path: shape for spec, shape in layout_}, params)
    if is_audio(config):
        from proactive_jax.models.audio_config import to_hf_dict_audio

        hf_config = to_hf_dict_audio(config, layout=layout, torch_dtype=dtype)
    else:
        hf_config = to_hf_dict(config, layout=layout, torch_dtype=dtype)
    shard_limit = parse_size(max_shard_size)

    out_dtype = np.dtype(_np_dtypes()[_ST_NAME[dtype]])
    st_dtype, itemsize = _ST_NAME[dtype], out_dtype.itemsize
    # embeddings, then layer by layer (so that a shard holds whole layers where possible), then the rest
    is_embed = lambda s: s.path[-2:] == ("embed_tokens", "embedding")
    first = [(s, sh, None) for s, sh in layout_ if is_embed(s)]
    layers = [(s, sh, i) for i in range(max(sh[0] for s, sh in layout_ if s.per_layer))
              for s, sh in layout_ if s.per_layer and i < sh[0]]
    rest = [(s, sh, None) for s, sh in layout_ if not s.per_layer and not is_embed(s)]
    specs = {spec.name(i): (spec, i) for spec, _, i in first + layers + rest}
    order = [(spec.name(i), spec.hf_shape(shape)) for spec, shape, i in first + layers + rest]
    if is_audio(config) and config.text.tie_word_embeddings:
        # transformers 5's Qwen2AudioForConditionalGeneration never ties: a tied model is written with its output
        # projection = a copy of the embeddings (reloaded here as tied again: equal tensors, resolve_tie)
        _, head = _table(config)
        (embed_spec, embed_shape, _), = first
        specs[head] = (embed_spec, None)
        order.append((head, embed_spec.hf_shape(embed_shape)))

    shards = _split_shards(order, itemsize, shard_limit)

    def get(name):
        spec, layer = specs[name]
        return _hf_array(params, spec, layer, out_dtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    # temporaries of a killed earlier export of this same directory (by name, age and dead pid only)
    remove_stale(out.parent, re.escape(f".{out.name}") + r"\.(tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        if len(shards) == 1:
            write_safetensors(tmp / SAFE_WEIGHTS_NAME, shards[0], get, st_dtype, itemsize)
        else:
            weight_map = {}
            for k, shard in enumerate(shards):
                fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(tmp / fname, shard, get, st_dtype, itemsize)
                weight_map.update({name: fname for name, _ in shard})
            total = sum(math.prod(s) * itemsize for _, s in order)
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(
            json.dumps(_generation_config(config, tok_dir), indent=2) + "\n")
        for src in tok_files:
            shutil.copy2(src, tmp / src.name)
        _replace_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.filename is None and e.errno is not None:  # e.g. a full disk inside a write: name the export
            raise OSError(e.errno, e.strerror, str(out)) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is set aside first and deleted only after the move."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
