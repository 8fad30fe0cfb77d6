"""What a run's data gives the train loop, text or speech: the per-host pipelines (:class:`DataBundle`) and the
host batch -> step input conversion (:func:`device_batch`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class DataBundle:
    train: Any  # data.pipeline.Pipeline
    valid: Any | None
    tokenizer_dir: str | None
    vocab_size: int


def device_batch(host_batch: dict) -> dict:
    """Pipeline output -> the arrays the step takes (``valid`` folded into ``example_mask``)."""
    b = {k: v for k, v in host_batch.items() if k not in ("valid", "example_index")}
    if "valid" in host_batch:
        b["example_mask"] = (np.asarray(b["example_mask"]) * np.asarray(host_batch["valid"])).astype(np.int32)
    return b
