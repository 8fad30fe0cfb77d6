"""``proactive-jax prepare-audio``: copy audio rows once into ArrayRecord shards for ``audio.stream``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_prepare_audio_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="the rows: a WAV + JSONL manifest (FILE.jsonl), a datasets Hub id or local dataset directory "
                        "([hub:]openslr/librispeech_asr), disk:DIR (save_to_disk) or tfds:NAME")
    p.add_argument("out_dir", metavar="OUT_DIR", help="where to write the ArrayRecord shards + index.json")
    p.add_argument("--config", default=None, help="dataset config / builder config (e.g. clean, other, all)")
    p.add_argument("--split", default="train", help="split (default train; e.g. train.clean.360)")
    p.add_argument("--max-rows", type=int, default=None, help="copy only the first N rows")
    p.add_argument("--rows-per-shard", type=int, default=2048, help="rows per ArrayRecord shard (default 2048)")
    p.add_argument("--cache-dir", default=None, help="datasets cache directory")
    p.add_argument("--data-dir", default=None, help="tfds data directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared set in OUT_DIR")


def status_line(args) -> str:
    return f"reading {args.spec} into {args.out_dir} ..."


def run_prepare_audio(args) -> int:
    from proactive_jax.data.audio_sources import prepare_audio
    from proactive_jax.data.audio_sources import spec_rows
    from proactive_jax.errors import DataError

    out = Path(args.out_dir)
    if args.rows_per_shard < 1:
        raise DataError(f"--rows-per-shard={args.rows_per_shard}: expected >= 1", reason="bad option")
    if args.max_rows is not None and args.max_rows < 1:
        raise DataError(f"--max-rows={args.max_rows}: expected >= 1", reason="bad option")
    if (out / "index.json").exists() and not args.overwrite:
        raise DataError(f"{out}: already holds a prepared set (index.json); choose another OUT_DIR or --overwrite",
                        reason="exists")
    rows, label = spec_rows(args.spec, config=args.config, split=args.split, max_rows=args.max_rows,
                            cache_dir=args.cache_dir, data_dir=args.data_dir)
    index = prepare_audio(rows, out, rows_per_shard=args.rows_per_shard, overwrite=args.overwrite)
    print(f"prepare-audio: {index['rows']} rows of {label} in {len(index['shards'])} ArrayRecord shards under {out} "
          f"(stream it with audio.stream.dir={out})")
    return 0
