"""The input pipeline: tokenized-example cache, length buckets, deterministic multi-host batches.

**Tokenization cache.** ``prepare_examples`` renders ``TextExample``s into ``StreamExample``s once and stores
the token ids in ``<cache_dir>/<key>.npz``, keyed by a hash of (dataset key, tokenizer fingerprint, render
config). A rerun with the same key loads the file and neither loads the dataset (the text examples may be
given as a zero-argument function) nor tokenizes again.

**Buckets.** A bucket is ``(S, T)``: the padded source-group length (prompt + units + end) and target-group
length (header + target). Buckets are ordered by ``(S + T, S, T)``; every example goes to the first bucket
in that order that fits it (the smallest). An example that fits no bucket raises ``ExampleError`` naming it,
or, with ``on_unfit="skip"``, is counted (``Pipeline.unfit``) and left out.

**Order.** A pure function of ``(seed, epoch, step)``. For epoch e, ``rng = numpy.random.default_rng([seed,
e])`` draws a permutation of the examples; walking it, each bucket's examples are cut into global batches of
``global_batch_size`` rows; ``rng`` then permutes the list of batches. Step s reads batch
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; ``steps_per_epoch`` is the same for every epoch.

**Short last batch of a bucket.** ``remainder="pad"`` (default) fills it with repeats of examples from the
start of the same bucket's batch list; the repeats are real examples, flagged ``valid=False`` so that losses
and metrics ignore them (nothing is dropped; a tiny dataset still yields batches). ``remainder="drop"``
drops them (each epoch drops different examples).

**Hosts.** Host h of H reads rows ``[h*B, (h+1)*B)`` of every global batch, ``B = global_batch_size / H``:
the hosts' rows are disjoint and cover the global batch. Every host computes the same plan, nothing is
communicated.

**Collate contract.** ``collate(examples: list[StreamExample], bucket: (S, T)) -> dict[str, np.ndarray]``
gets exactly ``B`` examples that all fit ``bucket`` and must return arrays whose leading dimension is ``B``
and whose shapes depend on ``(B, bucket)`` only (so a run sees at most ``len(buckets)`` distinct shapes and
jit compiles at most that many times). The pipeline adds ``valid`` (bool ``[B]``, False on padding repeats)
and ``example_index`` (int64 ``[B]``, the example's position in the pipeline's example list); collate must
not use these two keys.

**Resume.** ``batches_from(step)`` yields exactly what an uninterrupted run yields from ``step`` on.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from proactive_jax.data.example import ExampleError, StreamExample
from proactive_jax.models.safetensors_io import remove_stale
from proactive_jax.data.render import RenderConfig, TemplateParts, TextExample, render_example

log = logging.getLogger(__name__)

Bucket = tuple  # (S, T)
RESERVED_KEYS = ("valid", "example_index")
CACHE_FORMAT = 1


# --------------------------------------------------------------------------------------------- caching

def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer maps text to ids (model, added tokens, template)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    h.update(type(tokenizer).__name__.encode())
    return h.hexdigest()[:32]


def cache_key(dataset_key: str, tokenizer, render_cfg: RenderConfig, parts: TemplateParts | None = None,
              on_bad_example: str = "error") -> str:
    """Hash of (dataset key, tokenizer fingerprint, render config, template parts, bad-example policy)."""
    payload = json.dumps({
        "format": CACHE_FORMAT, "dataset": dataset_key, "tokenizer": tokenizer_fingerprint(tokenizer),
        "render": render_cfg.key(), "parts": parts.to_dict() if parts is not None else None,
        "on_bad_example": on_bad_example,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def save_examples(path, examples: Sequence[StreamExample], ids: Sequence[str], meta: dict | None = None) -> Path:
    """Store examples as flat int32 token arrays + lengths (written to a temp file, then renamed)."""
    path = Path(path)
    n = len(examples)
    plen = np.fromiter((len(e.prompt) for e in examples), np.int32, n)
    elen = np.fromiter((len(e.end) for e in examples), np.int32, n)
    hlen = np.fromiter((len(e.header) for e in examples), np.int32, n)
    tlen = np.fromiter((len(e.target) for e in examples), np.int32, n)
    nunits = np.fromiter((len(e.units) for e in examples), np.int32, n)
    ulen = np.fromiter((len(u) for e in examples for u in e.units), np.int32, int(nunits.sum()))
    flat = [t for e in examples for part in (e.prompt, *e.units, e.end, e.header, e.target) for t in part]
    tokens = np.asarray(flat, dtype=np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, plen=plen, elen=elen, hlen=hlen, tlen=tlen, nunits=nunits, ulen=ulen,
                     ids=np.asarray(json.dumps(list(ids))), meta=np.asarray(json.dumps(meta or {})))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_examples(path) -> tuple[list[StreamExample], list[str], dict]:
    with np.load(path) as z:
        tokens = z["tokens"].tolist()
        plen, elen, hlen, tlen = (z[k].tolist() for k in ("plen", "elen", "hlen", "tlen"))
        nunits, ulen = z["nunits"].tolist(), z["ulen"].tolist()
        ids = json.loads(str(z["ids"]))
        meta = json.loads(str(z["meta"]))
    out = []
    pos = upos = 0
    for i in range(len(plen)):
        p = tuple(tokens[pos:pos + plen[i]])
        pos += plen[i]
        units = []
        for k in range(nunits[i]):
            units.append(tuple(tokens[pos:pos + ulen[upos + k]]))
            pos += ulen[upos + k]
        upos += nunits[i]
        e = tuple(tokens[pos:pos + elen[i]])
        pos += elen[i]
        h = tuple(tokens[pos:pos + hlen[i]])
        pos += hlen[i]
        t = tuple(tokens[pos:pos + tlen[i]])
        pos += tlen[i]
        out.append(StreamExample(prompt=p, units=units, end=e, header=h, target=t))
    return out, ids, meta


@dataclasses.dataclass
class PreparedData:
    examples: list
    ids: list
    skipped: dict  # reason -> count (render errors under on_bad_example="skip")
    cache_path: Path | None
    cache_hit: bool


def _render_reason(msg: str) -> str:
    for key in ("over max_source_tokens", "over max_target_tokens", "tokenizes to no tokens", "is empty",
                "no units"):
        if key in msg:
            return key
    return "render error"


def prepare_examples(text_examples: Sequence[TextExample] | Callable[[], Sequence[TextExample]], tokenizer,
                     render_cfg: RenderConfig = RenderConfig(), *, dataset_key: str | None = None,
                     cache_dir=None, on_bad_example: str = "error",
                     parts: TemplateParts | None = None, source_bound: int | None = None) -> PreparedData:
    """Render text examples into ``StreamExample``s, through the on-disk cache when ``cache_dir`` and
    ``dataset_key`` are given. ``on_bad_example="skip"`` counts and skips examples that fail to render
    (``ExampleError``: empty unit, over-long, ...); "error" re-raises. ``source_bound`` (e.g. the largest
    bucket's S): a word-unit example with more words than that is rejected before it is tokenized (each word
    is at least one token), so a huge row costs no tokenizer memory."""
    if on_bad_example not in ("error", "skip"):
        raise ValueError(f"on_bad_example={on_bad_example!r}; expected 'error' or 'skip'")
    parts = parts if parts is not None else render_cfg.parts(tokenizer)
    path = None
    if cache_dir is not None and dataset_key is not None:
        key = cache_key(dataset_key + (f"|bound={source_bound}" if source_bound is not None else ""), tokenizer,
                        render_cfg, parts, on_bad_example)
        path = Path(cache_dir) / f"tokenized-{key}.npz"
        if path.exists():
            try:
                exs, ids, meta = load_examples(path)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:  # truncated / foreign file
                log.warning("tokenized cache %s is unreadable (%s: %s); rebuilding it", path, type(e).__name__, e)
                path.unlink(missing_ok=True)
            else:
                log.info("tokenized cache hit: %s (%d examples)", path, len(exs))
                return PreparedData(exs, ids, meta.get("skipped", {}), path, True)
        # temporaries of a killed earlier save of this cache file (by name, age and dead pid only)
        remove_stale(path.parent, re.escape(path.name) + r"\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp")
    rows = text_examples() if callable(text_examples) else text_examples
    examples, ids, skipped = [], [], {}
    bound = min((b for b in (render_cfg.max_source_tokens, source_bound) if b is not None), default=None)
    for ex in rows:
        try:
            if bound is not None and render_cfg.unit == "word" and len(ex.units) + 1 > bound:
                # every word is at least one token (+ the end marker): too long, without tokenizing it
                raise ExampleError(f"example {ex.id!r} (task {ex.task!r}): {len(ex.units)} source words make at "
                                   f"least {len(ex.units) + 1} source tokens, over max_source_tokens={bound} "
                                   "(or the largest bucket); not tokenized")
            examples.append(render_example(tokenizer, ex, parts, unit=render_cfg.unit,
                                           max_source_tokens=render_cfg.max_source_tokens,
                                           max_target_tokens=render_cfg.max_target_tokens))
            ids.append(ex.id)
        except ExampleError as e:
            if on_bad_example == "error":
                raise
            reason = _render_reason(str(e))
            skipped[reason] = skipped.get(reason, 0) + 1
    if skipped:
        log.warning("rendering %s: kept %d, skipped %s", dataset_key or "examples", len(examples), skipped)
    if path is not None:
        save_examples(path, examples, ids, {"skipped": skipped, "on_bad_example": on_bad_example,
                                            "dataset_key": dataset_key})
    return PreparedData(examples, ids, skipped, path, False)


# --------------------------------------------------------------------------------------------- batching

def normalize_buckets(buckets) -> list:
    out = sorted({(int(s), int(t)) for s, t in buckets}, key=lambda b: (b[0] + b[1], b[0], b[1]))
    if not out:
        raise ValueError("buckets is empty: give at least one (max_source_len, max_target_len)")
    for s, t in out:
        if s <= 0 or t <= 0:
            raise ValueError(f"bucket {(s, t)} must have positive lengths")
    return out


def assign_buckets(S: np.ndarray, T: np.ndarray, buckets: Sequence[Bucket]) -> np.ndarray:
    """Index (into ``buckets``, already normalized) of the first bucket fitting each example, -1 if none."""
    out = np.full(len(S), -1, np.int64)
    for b in range(len(buckets) - 1, -1, -1):
        s, t = buckets[b]
        out[(S <= s) & (T <= t)] = b
    return out


class Pipeline:
    """Deterministic bucketed batches of ``examples`` for one host (see the module doc)."""

    def __init__(self, examples: Sequence[StreamExample], buckets, *, global_batch_size: int, collate: Callable,
                 seed: int = 0, host_index: int = 0, host_count: int = 1, remainder: str = "pad",
                 on_unfit: str = "error", ids: Sequence[str] | None = None):
        if host_count < 1 or not 0 <= host_index < host_count:
            raise ValueError(f"host_index={host_index} must be in [0, host_count={host_count})")
        if global_batch_size <= 0 or global_batch_size % host_count:
            raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                             f"host_count={host_count}")
        if remainder not in ("pad", "drop"):
            raise ValueError(f"remainder={remainder!r}; expected 'pad' or 'drop'")
        if on_unfit not in ("error", "skip"):
            raise ValueError(f"on_unfit={on_unfit!r}; expected 'error' or 'skip'")
        self.examples = list(examples)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(self.examples))]
        self.buckets = normalize_buckets(buckets)
        self.global_batch_size = int(global_batch_size)
        self.host_index, self.host_count = int(host_index), int(host_count)
        self.batch_size = self.global_batch_size // self.host_count
        self.seed, self.remainder, self.collate = int(seed), remainder, collate
        n = len(self.examples)
        self.S = np.fromiter((e.S for e in self.examples), np.int64, n)
        self.T = np.fromiter((e.T for e in self.examples), np.int64, n)
        self.bucket_of = assign_buckets(self.S, self.T, self.buckets)
        bad = np.flatnonzero(self.bucket_of < 0)
        self.unfit = int(bad.size)
        if bad.size:
            i = int(bad[0])
            msg = (f"example {self.ids[i]!r} (index {i}) has S={self.S[i]}, T={self.T[i]} and fits no bucket "
                   f"of {self.buckets}" + (f" ({bad.size} examples fit none)" if bad.size > 1 else ""))
            if on_unfit == "error":
                raise ExampleError(msg)
            log.warning("skipping %d examples that fit no bucket; first: %s", bad.size, msg)
        self.bucket_counts = np.bincount(self.bucket_of[self.bucket_of >= 0], minlength=len(self.buckets))
        G = self.global_batch_size
        per = [(c + G - 1) // G if remainder == "pad" else c // G for c in self.bucket_counts.tolist()]
        self.batches_per_bucket = per
        self.steps_per_epoch = int(sum(per))
        if self.steps_per_epoch == 0:
            unfit = (f"; {self.unfit} of {n} examples fit no bucket of {self.buckets} (largest S={int(self.S.max())}, "
                     f"T={int(self.T.max())}): enlarge data.buckets" if self.unfit else "")
            raise ExampleError(f"no full batch: {int(self.bucket_counts.sum())} usable examples, global batch {G}, "
                               f"remainder={remainder!r}, bucket counts {self.bucket_counts.tolist()}{unfit}")
        self._plan = functools.lru_cache(maxsize=2)(self._make_plan)

    # -- the plan ---------------------------------------------------------------------------------------
    def _make_plan(self, epoch: int):
        """(bucket ids [steps], example index [steps, G], valid [steps, G]) of one epoch."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(len(self.examples))
        G = self.global_batch_size
        b_ids, idx, valid = [], [], []
        for b in range(len(self.buckets)):
            mine = perm[self.bucket_of[perm] == b]
            nb = self.batches_per_bucket[b]
            if nb == 0:
                continue
            take = mine[: nb * G]
            ok = np.ones(nb * G, bool)
            if take.size < nb * G:  # pad with repeats from the start of this bucket's list
                ok[take.size:] = False
                take = np.concatenate([take, np.resize(mine, nb * G - take.size)])
            b_ids += [b] * nb
            idx.append(take.reshape(nb, G))
            valid.append(ok.reshape(nb, G))
        order = rng.permutation(self.steps_per_epoch)
        return (np.asarray(b_ids, np.int64)[order], np.concatenate(idx)[order], np.concatenate(valid)[order])

    def global_batch(self, step: int) -> tuple[Bucket, np.ndarray, np.ndarray]:
        """(bucket, example indices [G], valid [G]) of the global batch at ``step``."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        epoch, k = divmod(int(step), self.steps_per_epoch)
        b, idx, valid = self._plan(epoch)
        return self.buckets[int(b[k])], idx[k], valid[k]

    def host_batch(self, step: int) -> tuple[Bucket, np.ndarray, np.ndarray]:
        bucket, idx, valid = self.global_batch(step)
        lo = self.host_index * self.batch_size
        return bucket, idx[lo:lo + self.batch_size], valid[lo:lo + self.batch_size]

    # -- batches ----------------------------------------------------------------------------------------
    def batch_at(self, step: int) -> dict:
        """This host's collated batch at ``step``, plus ``valid`` and ``example_index``."""
        bucket, idx, valid = self.host_batch(step)
        out = self.collate([self.examples[int(i)] for i in idx], bucket)
        if not isinstance(out, dict):
            raise TypeError(f"collate returned {type(out).__name__}, expected a dict of arrays")
        for k, v in out.items():
            if k in RESERVED_KEYS:
                raise ValueError(f"collate returned reserved key {k!r} (the pipeline adds it)")
            if np.ndim(v) < 1 or np.shape(v)[0] != self.batch_size:
                raise ValueError(f"collate output {k!r} has shape {np.shape(v)}; expected leading dim "
                                 f"{self.batch_size} (the per-host batch size)")
        out["valid"] = valid.copy()
        out["example_index"] = idx.astype(np.int64)
        return out

    def batches_from(self, step: int = 0, num_steps: int | None = None) -> Iterator[dict]:
        """Batches for steps ``step, step+1, ...`` (``num_steps`` of them, or forever)."""
        s = int(step)
        end = None if num_steps is None else s + int(num_steps)
        while end is None or s < end:
            yield self.batch_at(s)
            s += 1

    def epoch_of(self, step: int) -> int:
        return int(step) // self.steps_per_epoch

    def stats(self) -> dict:
        return {"examples": len(self.examples), "unfit": self.unfit, "buckets": self.buckets,
                "bucket_counts": self.bucket_counts.tolist(), "steps_per_epoch": self.steps_per_epoch,
                "global_batch_size": self.global_batch_size, "per_host_batch_size": self.batch_size}
