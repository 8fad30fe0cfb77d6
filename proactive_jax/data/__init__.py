"""Data: task adapters, loaders, rendering to ``StreamExample``, synthetic tasks and the input pipeline.

Data flows one way: dataset rows (``loaders``) -> ``TextExample`` (``tasks`` / ``synthetic``) ->
``StreamExample`` (``render``) -> cached, bucketed, per-host batches (``pipeline``).
``datasets`` and ``tensorflow_datasets`` are imported lazily, only by the loaders that use them.
"""
from proactive_jax.data.loaders import (KNOWN_DATASETS, PARQUET_REVISION, DatasetSpec, LoaderError, TfdsRows, hub_parquet_spec,
                      known_dataset, load_known, load_rows, load_task)
from proactive_jax.data.pipeline import (Pipeline, PreparedData, assign_buckets, cache_key, load_examples, normalize_buckets,
                       prepare_examples, save_examples, tokenizer_fingerprint)
from proactive_jax.data.render import (RenderConfig, TemplateParts, TextExample, render_example, split_words, template_parts,
                     word_start_table)
from proactive_jax.data.synthetic import (WORD_MAP_MAX_LOOKAHEAD, LookupConfig, WordMapConfig, build_tokenizer, load_tokenizer,
                        make_task)
from proactive_jax.data.tasks import TASKS, AdaptReport, RowRef, adapt_rows

__all__ = [
    "KNOWN_DATASETS", "PARQUET_REVISION", "DatasetSpec", "LoaderError", "TfdsRows", "hub_parquet_spec",
    "known_dataset", "load_known", "load_rows", "load_task",
    "Pipeline", "PreparedData", "assign_buckets", "cache_key", "load_examples", "normalize_buckets",
    "prepare_examples", "save_examples", "tokenizer_fingerprint",
    "RenderConfig", "TemplateParts", "TextExample", "render_example", "split_words", "template_parts",
    "word_start_table",
    "WORD_MAP_MAX_LOOKAHEAD", "LookupConfig", "WordMapConfig", "build_tokenizer", "load_tokenizer", "make_task",
    "TASKS", "AdaptReport", "RowRef", "adapt_rows",
]
