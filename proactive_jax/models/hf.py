"""Hugging Face checkpoint loading: safetensors (single file or sharded, lazy); export is :mod:`.hf_export`.

One table per model (:mod:`.hf_names`: :data:`TENSOR_TABLE`, :data:`AUDIO_TENSOR_TABLE`) maps every HF
tensor name to a parameter path; both the loader and the exporter walk it.

Loading reads one tensor at a time straight from the file (:mod:`.safetensors_io`: ``pread`` at the offsets
in the safetensors header; no pickle, no torch, no mmap), casts it into a preallocated float32 leaf, and hands each finished
leaf to ``place`` (by default ``jax.device_put``), so host memory peaks at about one float32 copy of the
model plus one tensor. bf16/f16 checkpoints are read through ``ml_dtypes`` (a JAX dependency).

Tied embeddings (:func:`resolve_tie`) follow what ``transformers`` (5.x) does with the tensors in the file, not
only the config flag: an output projection stored in the file is used unless it equals the embeddings of a
model that declares the tie; a missing one is the embeddings when the config declares the tie, else an error.
Every tensor in the file is either read or checked equal to the embeddings it stands for (or on the named
allow-list :data:`UNUSED_TENSOR_PATTERNS`); anything else is an error naming the tensor and its file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from proactive_jax.models.config import ModelConfig, load_hf_config
from proactive_jax.models.kinds import is_audio, text_config
from proactive_jax.models.hf_names import (TIED_LM_HEAD, _get, _set, _table, expected_tensors, tensor_layout)
from proactive_jax.models.safetensors_io import (_READERS, CheckpointError, SafetensorsFile, _np_dtypes)

log = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
)
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json", "*.pt", "*.pth", "*.ckpt")
# The only tensors a checkpoint may hold that the loader does not read: rotary ``inv_freq`` buffers that some
# (older) exporters write; they carry no parameters (recomputed from rope_theta / rope scaling).
UNUSED_TENSOR_PATTERNS: tuple[re.Pattern, ...] = (
    re.compile(r"(language_model\.)?model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
)
DEFAULT_MAX_SHARD_SIZE = "5GB"


# ---------------------------------------------------------------------------------------------
# load_pretrained
# ---------------------------------------------------------------------------------------------

def _weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """The safetensors files of a checkpoint directory, and the index's weight map when sharded."""
    index_path = root / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map = dict(index["weight_map"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{index_path}: not a valid safetensors index (needs a 'weight_map' "
                                  f"object; {type(e).__name__}: {e})") from None
        files = []
        for fname in sorted(set(weight_map.values())):
            p = root / fname
            if Path(fname).name != fname:
                raise CheckpointError(f"{index_path}: shard name {fname!r} must be a plain file name")
            if not p.is_file():
                raise FileNotFoundError(f"{index_path}: names shard file {fname!r}, which does not exist in {root}")
            files.append(p)
        if not files:
            raise CheckpointError(f"{index_path}: weight_map is empty")
        return files, weight_map, index_path
    single = root / SAFE_WEIGHTS_NAME
    if single.is_file():
        return [single], None, None
    pickles = sorted({p.name for pat in PICKLE_WEIGHT_PATTERNS for p in root.glob(pat)})
    if pickles:
        raise CheckpointError(
            f"{root}: holds only PyTorch pickle weights ({', '.join(pickles)}) and no {SAFE_WEIGHTS_NAME} or "
            f"{SAFE_WEIGHTS_INDEX_NAME}. Pickle files are never loaded here (unpickling can run arbitrary "
            f"code). Convert the checkpoint to safetensors first, in an environment you trust, e.g. "
            f"AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True).")
    others = sorted(p.name for p in root.glob("*.safetensors"))
    hint = f" (found {others}; name a single file {SAFE_WEIGHTS_NAME} or add an index)" if others else ""
    raise FileNotFoundError(f"{root}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} found{hint}")


def _default_place(path, array):
    import jax

    return jax.device_put(array)


def keep_on_host(path, array):
    """A ``place`` hook that keeps the float32 numpy arrays on the host."""
    return array


def place_on(shardings) -> Callable[[tuple[str, ...], np.ndarray], Any]:
    """A ``place`` hook putting each leaf onto its sharding from a params-shaped tree of shardings
    (e.g. ``NamedSharding``s for FSDP), so the loaded params never exist whole on one device."""
    import jax

    return lambda path, array: jax.device_put(array, _get(shardings, path))


def _tensor_index(files, weight_map, index_path, open_file, handles: list) -> dict[str, Any]:
    """Which open file holds which tensor (the headers are the truth; the index must agree with them)."""
    where: dict[str, Any] = {}
    for fp in files:
        h = open_file(fp)
        handles.append(h)
        for name in h.keys():
            if name in where:
                raise CheckpointError(f"tensor {name!r} appears in both {where[name].path.name} and {fp.name}")
            where[name] = h
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in where or where[name].path.name != fname:
                found = f"it is in {where[name].path.name}" if name in where else "no shard holds it"
                raise CheckpointError(f"{index_path}: maps tensor {name!r} to {fname}, but {found}")
    return where


def _embed_name(config) -> str:
    """The HF name of the input embeddings of ``config``'s model."""
    _, head = _table(config)
    return head[: -len(TIED_LM_HEAD)] + "model.embed_tokens.weight"


def _with_tie(config, tie: bool):
    if is_audio(config):
        return config.replace(text=config.text.replace(tie_word_embeddings=tie))
    return config.replace(tie_word_embeddings=tie)


def _rows_f32(h, name: str, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of a 2-D tensor of a :class:`SafetensorsFile` as float32 (one pread, no whole read)."""
    dtype, shape, begin, _ = h.entries[name]
    npd = _np_dtypes()[dtype]
    row = math.prod(shape[1:]) * npd.itemsize
    n, off = (r1 - r0) * row, h._data_start + begin + r0 * row
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.preadv(h._f.fileno(), [view[got:]], off + got)
        if k <= 0:
            raise CheckpointError(f"{h.path}: unexpected end of file reading tensor {name!r}")
        got += k
    return np.frombuffer(buf, npd).astype(np.float32)


def _same_values(ha, a: str, hb, b: str, block_bytes: int = 64 << 20) -> bool:
    """Whether tensors ``a`` and ``b`` hold the same values (as ``torch.equal`` after the cast to float32:
    NaN differs from everything, -0.0 equals 0.0), compared block by block (bounded host memory)."""
    (da, sa), (db, sb) = ha.info(a), hb.info(b)
    if sa != sb or da not in _np_dtypes() or db not in _np_dtypes():
        return False
    if not (isinstance(ha, SafetensorsFile) and isinstance(hb, SafetensorsFile)) or len(sa) != 2:
        return bool(np.array_equal(np.asarray(ha.read(a), np.float32), np.asarray(hb.read(b), np.float32)))
    rows = max(1, block_bytes // (4 * max(1, sa[1])))
    for r0 in range(0, sa[0], rows):
        r1 = min(sa[0], r0 + rows)
        if not np.array_equal(_rows_f32(ha, a, r0, r1), _rows_f32(hb, b, r0, r1)):
            return False
    return True


def resolve_tie(config, where: Mapping[str, Any], *, warn: bool = True):
    """``config`` with ``tie_word_embeddings`` as ``transformers`` resolves it for the tensors in the file.

    ``config``'s flag is the *declared* tie (Qwen2/Qwen3: config.json's ``tie_word_embeddings``, default false;
    Qwen2-Audio: ``text_config.tie_word_embeddings``, default false, see
    :func:`~.audio_config.from_hf_dict_audio`). transformers 5 loads the output projection from the file whenever
    the file holds it: a declared tie is kept only when that tensor equals the embeddings (then the two are one
    parameter, as transformers ties equal tensors); a distinct one unties the model (transformers warns "both are
    present in the checkpoints with different values, so we will NOT tie them"; Qwen2-Audio's composite model
    never ties at all in transformers 5, so a distinct head is always its head). A file without the tensor keeps
    the declared tie; an undeclared tie then fails as a missing tensor (:func:`_check_tensors`).
    """
    text = text_config(config)
    _, head = _table(config)
    if head not in where:
        return config
    v, d = text.vocab_size, text.hidden_size
    shape = where[head].info(head)[1]
    if shape != (v, d):
        raise CheckpointError(f"{where[head].path}: tensor {head!r} has shape {list(shape)}, expected {[v, d]} "
                              f"(the output projection, vocab_size x hidden_size)")
    if not text.tie_word_embeddings:
        return config
    embed = _embed_name(config)
    if embed in where and _same_values(where[embed], embed, where[head], head):
        return config
    if warn:
        log.warning("%s: config.json ties the word embeddings but tensor %s differs from %s; using it as the "
                    "output projection, untied (as transformers does)", where[head].path, head, embed)
    return _with_tie(config, False)


def _unused(name: str) -> bool:
    return any(p.fullmatch(name) for p in UNUSED_TENSOR_PATTERNS)


def _check_tensors(root: Path, config: ModelConfig, layout, where: Mapping[str, Any], files) -> None:
    """Every expected tensor is present with its shape and a floating dtype; nothing unexpected is there.

    ``config`` is already :func:`resolve_tie`'d: a tied config may still find the output projection in the file
    (checked equal to the embeddings there); every other tensor must be read or on the allow-list.
    """
    expected = expected_tensors(config, layout)
    text = text_config(config)
    _, head = _table(config)
    allowed = {n for n in where if _unused(n)}
    if text.tie_word_embeddings:
        allowed.add(head)
    unexpected = sorted(set(where) - set(expected) - allowed)
    if unexpected:
        listed = ", ".join(f"{n!r} (in {where[n].path.name})" for n in unexpected[:8])
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        raise CheckpointError(f"{root}: tensors that {config.model_type} with {text.num_hidden_layers} layers does "
                              f"not use: {listed}{more} (a checkpoint may hold only the model's tensors and the "
                              f"rotary inv_freq buffers)")
    missing = [n for n in expected if n not in where]
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        what = "missing tensors"
        if is_audio(config) and any(n.startswith(("audio_tower.", "multi_modal_projector.")) for n in missing):
            what = "missing audio encoder/projector tensors (a qwen2_audio checkpoint needs them)"
        hint = ""
        if head in missing:
            key = "text_config.tie_word_embeddings" if is_audio(config) else "tie_word_embeddings"
            hint = (f"; {head!r} is the output projection and config.json does not tie it to the embeddings "
                    f"({key} is false or unset" + (", and transformers reads Qwen2-Audio's tie only there"
                                                   if is_audio(config) else "") + ")")
        raise CheckpointError(f"{root}: {what} {missing[:8]}{more} "
                              f"(looked in {', '.join(f.name for f in files)}){hint}")
    for name, shape in expected.items():
        st_dtype, actual = where[name].info(name)
        if actual != shape:
            raise CheckpointError(f"{where[name].path}: tensor {name!r} has shape {list(actual)}, expected "
                                  f"{list(shape)} from config.json")
        if st_dtype not in ("F32", "BF16", "F16", "F64"):
            raise CheckpointError(f"{where[name].path}: tensor {name!r} has dtype {st_dtype}, expected a "
                                  f"floating dtype (F32, BF16, F16)")


def _read_leaves(config: ModelConfig, layout, where: Mapping[str, Any], place) -> dict:
    """One leaf at a time: preallocate, fill tensor by tensor, hand over to ``place``, drop."""
    params: dict = {}
    for spec, leaf_shape in layout:
        leaf = np.empty(leaf_shape, np.float32)
        layers = range(leaf_shape[0]) if spec.per_layer else [None]
        for i in layers:
            name = spec.name(i)
            dst = leaf[i] if spec.per_layer else leaf
            # float32 and not transposed: read straight into the leaf; else one temporary tensor
            t = where[name].read(name, out=None if spec.transpose else dst)
            if t is not dst:
                dst[...] = t.T if spec.transpose else t
            del t
        if not np.isfinite(leaf).all():
            first = spec.name(0 if spec.per_layer else None)
            log.warning("%s: tensor %s%s holds %d non-finite values (NaN/Inf); outputs will be NaN",
                        where[first].path, first, " (or another layer's)" if spec.per_layer else "",
                        int(leaf.size - np.isfinite(leaf).sum()))
        _set(params, spec.path, place(spec.path, leaf))
        del leaf
    return params


def _declared_config(path: str | Path, **kw):
    """The model config exactly as config.json declares it (no look at the weights)."""
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    if p.is_file():
        try:
            hf = json.loads(p.read_text())
        except json.JSONDecodeError:
            hf = None  # load_hf_config reports it
        if isinstance(hf, dict) and hf.get("model_type") == "qwen2_audio":
            from proactive_jax.models.audio_config import from_hf_dict_audio

            return from_hf_dict_audio(hf, source=str(p), **kw)
    return load_hf_config(path, **kw)


def _has_weights(root: Path) -> bool:
    return (root / SAFE_WEIGHTS_INDEX_NAME).is_file() or (root / SAFE_WEIGHTS_NAME).is_file()


def load_model_config(path: str | Path, **kw):
    """The model config of a config.json (the file, or the directory holding it): a ModelConfig, or an
    AudioModelConfig for ``model_type: qwen2_audio``.

    For a directory that also holds safetensors weights, ``tie_word_embeddings`` is :func:`resolve_tie`'d
    against the tensors in the files (the headers; the output projection and embeddings are compared only
    when config.json declares the tie and the file holds both), so it equals the config that
    :func:`load_pretrained` returns for the same directory.
    """
    config = _declared_config(path, **kw)
    root = Path(path)
    if root.is_dir() and _has_weights(root):
        files, weight_map, index_path = _weight_files(root)
        handles: list = []
        try:
            config = resolve_tie(config, _tensor_index(files, weight_map, index_path, SafetensorsFile, handles),
                                 warn=False)
        finally:
            for h in handles:
                h.close()
    return config


def load_pretrained(path: str | Path, dtype: str = "float32", *,
                    place: Callable[[tuple[str, ...], np.ndarray], Any] | None = None,
                    reader: str = "pread", **compute) -> tuple[ModelConfig, dict]:
    """Load a local Hugging Face Qwen2/Qwen2.5/Qwen3 or Qwen2-Audio checkpoint directory.

    Args:
      path: directory with ``config.json`` (transformers v4 or v5 layout) and ``model.safetensors`` or
        ``model.safetensors.index.json`` + shards.
      dtype: compute dtype stored in the returned config ("float32", "bfloat16", "float16"); the
        parameters are always float32 master weights, whatever the checkpoint's dtype.
      place: ``place(path_tuple, float32_numpy_leaf) -> leaf``, called once per finished leaf, e.g.
        :func:`place_on` ``(shardings_tree)``. Default: ``jax.device_put`` onto the default device;
        :func:`keep_on_host` keeps numpy arrays.
      reader: "pread" (default; reads each tensor with one pread, no mmap) or "safe_open"
        (``safetensors.safe_open``, mmap based).
      **compute: further compute options for the config (``scan_layers``, ``remat``).

    Returns ``(config, params)``; ``params`` is the nested dict of :mod:`proactive_jax.models.qwen`
    (for ``model_type: qwen2_audio``: an :class:`~.audio_config.AudioModelConfig` and the tree of
    :mod:`proactive_jax.models.audio`). ``config.tie_word_embeddings`` is the tie transformers resolves for
    these files (:func:`resolve_tie`): an output projection in the file that differs from the embeddings is
    loaded (``params`` then has ``lm_head``) even when config.json declares the tie. A tensor the model does not
    use is an error (:data:`UNUSED_TENSOR_PATTERNS` excepted).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: checkpoint directory does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: expected a Hugging Face checkpoint directory, got a file")
    config = _declared_config(root, dtype=dtype, **compute)
    files, weight_map, index_path = _weight_files(root)
    place = place or _default_place
    if reader not in _READERS:
        raise ValueError(f"reader {reader!r}: expected one of {sorted(_READERS)}")
    open_file = _READERS[reader]

    handles: list = []
    try:
        where = _tensor_index(files, weight_map, index_path, open_file, handles)
        config = resolve_tie(config, where)
        layout = tensor_layout(config)
        _check_tensors(root, config, layout, where, files)
        params = _read_leaves(config, layout, where, place)
    finally:
        for h in handles:
            h.close()
    return config, params
