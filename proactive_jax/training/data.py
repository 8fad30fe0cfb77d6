"""Run config -> data: the tokenizer, rendered and cached examples, and the per-host train / valid pipelines."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path


from proactive_jax.method.objective import pack_batch
from proactive_jax.models.config import ModelConfig
from proactive_jax.errors import ConfigError
from proactive_jax.training.batches import DataBundle
from proactive_jax.training.run_config import DataSection, RunConfig
from proactive_jax.models.kinds import is_audio

log = logging.getLogger(__name__)


def _collate(m_cap):
    def collate(examples, bucket):
        return pack_batch(examples, bucket, batch_size=len(examples), m_cap=m_cap or bucket[0])
    return collate


def _text_examples(data: DataSection, split: str, max_rows: int | None, *, n_synthetic: int | None = None):
    """``(dataset key, zero-arg loader of TextExamples)`` for the configured task and ``split``."""
    from proactive_jax.data import loaders, synthetic

    if data.task == "synthetic":
        syn = data.synthetic
        split = {"validation": "valid"}.get(split, split)
        n = n_synthetic if n_synthetic is not None else syn.n_train

        def load():
            out = []
            for name in syn.tasks:
                out += synthetic.make_task(name, n, seed=syn.seed, split=split)
            return out

        return f"synthetic:{','.join(syn.tasks)}:{n}:{syn.seed}:{split}", load
    if data.task == "custom":
        if data.dataset is None or data.adapter is None:
            raise ConfigError("data.task=custom needs data.dataset (a DatasetSpec) and data.adapter")
        spec = dataclasses.replace(data.dataset, split=split, max_rows=max_rows)
        adapter, opts = data.adapter, dict(data.adapter_options)
    else:
        if data.task not in loaders.KNOWN_DATASETS:
            raise ConfigError(f"data.task={data.task!r}: expected 'synthetic', 'custom' or one of "
                                 f"{sorted(loaders.KNOWN_DATASETS)}")
        spec, adapter, opts = loaders.known_dataset(data.task, split)
        spec = dataclasses.replace(spec, max_rows=max_rows)
        opts.update(data.adapter_options)

    def load():
        rows, _ = loaders.load_task(spec, adapter, on_bad_example=data.on_bad_example, **opts)
        return rows

    return f"{spec.key()}|{adapter}|{json.dumps(opts, sort_keys=True)}", load


def build_data(run: RunConfig, model_cfg: ModelConfig, *, host_index: int = 0, host_count: int = 1,
               n_devices: int = 1) -> DataBundle:
    """Tokenizer, rendered + cached examples and the deterministic per-host pipelines (train, valid)."""
    from transformers import AutoTokenizer

    from proactive_jax.data import pipeline as pl
    from proactive_jax.data import synthetic

    from proactive_jax.training.run_config import AUDIO_TASKS

    if run.data.task in AUDIO_TASKS:  # speech: waveforms -> log-mel in the collate (training.audio_batches)
        from proactive_jax.training.audio_batches import build_audio_data

        return build_audio_data(run, model_cfg, host_index=host_index, host_count=host_count, n_devices=n_devices)
    if is_audio(model_cfg):
        raise ConfigError(f"model is qwen2_audio but data.task={run.data.task!r} is a text task; expected one of "
                             f"{list(AUDIO_TASKS)}")
    data = run.data
    tok_dir = data.tokenizer or (str(synthetic.tokenizer_dir(data.synthetic.tasks)) if data.task == "synthetic"
                                 else run.model.hf_dir)
    if tok_dir is None or not Path(tok_dir).is_dir():
        raise FileNotFoundError(f"data.tokenizer={tok_dir}: tokenizer directory does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    if len(tokenizer) > model_cfg.vocab_size:
        raise ConfigError(f"the tokenizer in {tok_dir} has {len(tokenizer)} tokens but the model's vocab_size "
                             f"is {model_cfg.vocab_size} (model.config.vocab_size)")
    cache_dir = data.cache_dir or str(Path(run.out_dir) / "cache")
    micro = data.micro_batch_size or data.global_batch_size
    if micro % n_devices:
        raise ConfigError(f"the (micro)batch of {micro} rows (data.micro_batch_size or data.global_batch_size) "
                             f"must be a multiple of the {n_devices} devices of the mesh")

    def pipeline(split, max_rows, batch_size, n_syn=None):
        key, load = _text_examples(data, split, max_rows, n_synthetic=n_syn)
        bound = max(b[0] for b in data.buckets) if data.on_unfit == "skip" else None  # skip huge rows untokenized
        prepared = pl.prepare_examples(load, tokenizer, data.render, dataset_key=key, cache_dir=cache_dir,
                                       on_bad_example=data.on_bad_example, source_bound=bound)
        if not prepared.examples:
            raise ConfigError(f"data.task={data.task!r} split {split!r}: no usable examples (skipped: "
                                 f"{prepared.skipped or 'none'}; the largest of data.buckets={list(data.buckets)} "
                                 "bounds the source length)")
        return pl.Pipeline(prepared.examples, [tuple(b) for b in data.buckets], global_batch_size=batch_size,
                           collate=_collate(data.m_cap), seed=data.seed, host_index=host_index,
                           host_count=host_count, remainder=data.remainder, on_unfit=data.on_unfit,
                           ids=prepared.ids)

    train = pipeline(data.split, data.max_train_rows, data.global_batch_size)
    valid = None
    want_valid = run.eval_every > 0 and data.valid_batches > 0 and (
        data.task == "synthetic" and data.synthetic.n_valid > 0 or data.task != "synthetic" and data.valid_split)
    if want_valid:
        valid = pipeline(data.valid_split or "valid", data.max_valid_rows, micro, n_syn=data.synthetic.n_valid)
    return DataBundle(train, valid, str(tok_dir), len(tokenizer))
