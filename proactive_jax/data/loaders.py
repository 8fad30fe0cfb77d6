"""Loading dataset rows: Hugging Face ``datasets`` (Hub, local files, ``save_to_disk``) and
``tensorflow-datasets`` (``tfds.data_source``, random access over ArrayRecord files).

``datasets`` and ``tensorflow_datasets`` are imported inside the functions that need them, so that
``import proactive_jax`` works without either.

**Script-based Hub datasets.** ``datasets`` >= 4 no longer runs dataset scripts ("Dataset scripts are no
longer supported, but found iwslt2017.py"). ``IWSLT/iwslt2017`` (and ``sagnikrayc/mctest``) are script-based;
the Hub keeps an automatic parquet conversion of them on the ``refs/convert/parquet`` branch, laid out as
``<config>/<split>/*.parquet``. They are reached with ``revision="refs/convert/parquet"`` and
``data_dir=<config>`` (the parquet branch has no builder configs, so the config is selected by folder)::

    load_rows(DatasetSpec("hub", "IWSLT/iwslt2017", data_dir="iwslt2017-en-de",
                          revision=PARQUET_REVISION, split="validation"))

``hub_parquet_spec`` builds such a spec, and ``KNOWN_DATASETS`` lists the paper's text datasets with the
spec and task adapter to use. The same layout copied to a local folder loads with
``DatasetSpec("hub", "/path/to/folder", data_dir=<config>)`` (a local directory goes through the same
``load_dataset`` call, with the same config-by-folder selection); the tests do exactly that.

**tfds.** ``tfds.data_source(name, split=..., data_dir=...)`` needs the dataset prepared in the ArrayRecord
file format (``download_and_prepare(file_format="array_record")``, which ``data_source`` triggers itself
when ``download=True``). It works without TensorFlow installed: preparing (writing ArrayRecord shards,
``dataset_info.json``, ``features.json``) and random-access reading both go through ``array_record`` and
``etils``, not ``tf``. Text features come back as ``bytes``; ``TfdsRows`` decodes them to ``str`` and
numpy values to Python ones, so rows match the Hugging Face schema of the same dataset (tfds ``squad`` has
the same fields as ``rajpurkar/squad``).

**Offline.** Nothing waits on a network that is not there. ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``
are honoured, and before a Hub dataset or a tfds download is attempted a 3-second probe checks that the
host answers; when it does not, the Hub is used in offline mode (``datasets``' local cache still works) and
a dataset that is not available locally is an :class:`~proactive_jax.errors.OfflineError` within seconds,
saying what could not be fetched and how to provide it locally (``save_to_disk`` + ``source=disk``, local
files with ``source=files``, or a prepared tfds ``data_dir``). tfds never prepares into ``$HOME`` unasked:
a dataset that is not prepared in ``data_dir`` (default ``$TFDS_DATA_DIR``) is only downloaded when the
network answers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from proactive_jax.errors import DataError, OfflineError
from proactive_jax.data.render import TextExample
from proactive_jax.data.tasks import AdaptReport, adapt_rows

PARQUET_REVISION = "refs/convert/parquet"
SOURCES = ("hub", "files", "disk", "tfds", "openslr")  # openslr: the raw LibriSpeech tree (speech tasks only)
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


class LoaderError(DataError):
    """A dataset cannot be loaded; the message names the dataset spec and what was expected."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Which rows to load.

    ``source``: "hub" (``load_dataset(path, name, ...)``; a local directory with data files also works),
    "files" (local json/jsonl/csv/parquet files: ``path`` is one file or glob, ``data_files`` more of them),
    "disk" (a ``save_to_disk`` directory, a Dataset or a DatasetDict) or "tfds" (``tfds.data_source``;
    ``path`` is the tfds name, ``name`` its builder config, ``data_dir`` the tfds data directory).
    ``max_rows`` keeps the first rows only (after the split is selected).
    """

    source: str
    path: str
    name: str | None = None
    split: str = "train"
    revision: str | None = None
    data_dir: str | None = None
    data_files: tuple = ()
    max_rows: int | None = None
    download: bool = True  # tfds only: prepare the ArrayRecord files if absent

    def __post_init__(self):
        if self.source not in SOURCES:
            raise LoaderError(f"DatasetSpec.source={self.source!r}; expected one of {SOURCES}")
        object.__setattr__(self, "data_files", tuple(str(f) for f in self.data_files))

    @property
    def label(self) -> str:
        """A short name for messages and example ids."""
        base = self.path if self.source != "files" else Path(self.path).name
        cfg = self.name or self.data_dir
        return f"{base}:{cfg}" if cfg else base

    def key(self) -> str:
        """A stable string identifying the rows (local files: also their sizes and mtimes)."""
        d = dataclasses.asdict(self)
        if self.source in ("files", "disk", "openslr") or (self.source == "hub" and os.path.isdir(self.path)):
            d["_stat"] = _stat_fingerprint(self)
        return json.dumps(d, sort_keys=True)

    def with_split(self, split: str) -> "DatasetSpec":
        return dataclasses.replace(self, split=split)


def _stat_fingerprint(spec: DatasetSpec) -> list:
    import glob

    out = []
    paths = [spec.path, *spec.data_files]
    for p in paths:
        for f in sorted(glob.glob(p)) or [p]:
            fp = Path(f)
            files = sorted(x for x in fp.rglob("*") if x.is_file()) if fp.is_dir() else [fp]
            for x in files:
                if x.exists():
                    st = x.stat()
                    out.append([str(x), st.st_size, int(st.st_mtime_ns)])
    return out


def hub_parquet_spec(hub_id: str, config: str, split: str = "train", **kw) -> DatasetSpec:
    """A spec for the Hub's parquet conversion of a (script-based) dataset: ``<config>/<split>/*.parquet``."""
    return DatasetSpec("hub", hub_id, split=split, revision=PARQUET_REVISION, data_dir=config, **kw)


# name -> (spec factory by split, task adapter name, task options)
KNOWN_DATASETS: dict[str, tuple[Callable[[str], DatasetSpec], str, dict]] = {
    "iwslt2017-en-de": (lambda s: hub_parquet_spec("IWSLT/iwslt2017", "iwslt2017-en-de", s), "iwslt2017",
                        {"src": "en", "tgt": "de"}),
    "iwslt2017-de-en": (lambda s: hub_parquet_spec("IWSLT/iwslt2017", "iwslt2017-en-de", s), "iwslt2017",
                        {"src": "de", "tgt": "en"}),
    "iwslt2017-en-fr": (lambda s: hub_parquet_spec("IWSLT/iwslt2017", "iwslt2017-en-fr", s), "iwslt2017",
                        {"src": "en", "tgt": "fr"}),
    "iwslt2017-fr-en": (lambda s: hub_parquet_spec("IWSLT/iwslt2017", "iwslt2017-en-fr", s), "iwslt2017",
                        {"src": "fr", "tgt": "en"}),
    "squad": (lambda s: DatasetSpec("hub", "rajpurkar/squad", split=s), "squad", {}),
    "squad-tfds": (lambda s: DatasetSpec("tfds", "squad", name="v1.1", split=s), "squad", {}),
    "mctest-mc500": (lambda s: hub_parquet_spec("sagnikrayc/mctest", "mc500", s), "mctest", {}),
    "mctest-mc160": (lambda s: hub_parquet_spec("sagnikrayc/mctest", "mc160", s), "mctest", {}),
    "dialogsum": (lambda s: DatasetSpec("hub", "knkarthick/dialogsum", split=s), "dialogsum", {}),
}


def known_dataset(name: str, split: str) -> tuple[DatasetSpec, str, dict]:
    """``(spec, task, task_options)`` for one of ``KNOWN_DATASETS``."""
    if name not in KNOWN_DATASETS:
        raise LoaderError(f"unknown dataset {name!r}; expected one of {sorted(KNOWN_DATASETS)}")
    make, task, opts = KNOWN_DATASETS[name]
    return make(split), task, dict(opts)


# ------------------------------------------------------------------------------------------ Hugging Face

def _file_builder(files: Sequence[str], spec: DatasetSpec) -> str:
    kinds = set()
    for f in files:
        suffix = Path(f.rstrip("*")).suffix.lower()
        if suffix not in _FILE_BUILDERS:
            raise LoaderError(f"{spec.label}: cannot tell the format of {f!r}; expected one of "
                              f"{sorted(_FILE_BUILDERS)}")
        kinds.add(_FILE_BUILDERS[suffix])
    if len(kinds) != 1:
        raise LoaderError(f"{spec.label}: data files mix formats {sorted(kinds)}")
    return kinds.pop()


_TRUE = ("1", "on", "true", "yes")
_PROBED: dict[str, bool] = {}


def offline_env() -> str | None:
    """The name of the offline switch that is set (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``), if any."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return name
    return None


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds, DNS included (a daemon
    thread, so a hanging resolver cannot stall the caller); cached per process."""
    import socket
    import threading

    key = f"{host}:{port}"
    if key in _PROBED:
        return _PROBED[key]
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    _PROBED[key] = bool(ok)
    return _PROBED[key]


def _hub_host() -> str:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def _set_hub_offline() -> None:
    """Offline mode for this process (also for modules already imported, which read the flags at import)."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        import datasets.config as dc

        dc.HF_HUB_OFFLINE = True
        if hasattr(dc, "HF_DATASETS_OFFLINE"):
            dc.HF_DATASETS_OFFLINE = True
    except ImportError:
        pass


def _is_remote(spec: DatasetSpec) -> bool:
    return spec.source == "hub" and not os.path.exists(spec.path)


def _hub_offline_reason() -> str | None:
    """Why the Hub cannot be used now (an offline switch or an unreachable host), else None."""
    env = offline_env()
    if env:
        return f"{env}=1"
    host = _hub_host()
    if not host_reachable(host):
        return f"no network: {host} did not answer within 3 s"
    return None


def _offline_hint(spec: DatasetSpec) -> str:
    args = ", ".join(repr(a) for a in (spec.path, spec.name) if a) + (
        f", data_dir={spec.data_dir!r}" if spec.data_dir else "") + (
        f", revision={spec.revision!r}" if spec.revision else "")
    return (f"to provide it locally, on a machine with network run datasets.load_dataset({args})"
            ".save_to_disk(DIR), copy DIR here and set dataset.source=disk dataset.path=DIR (or give local "
            "json/csv/parquet files with dataset.source=files)")


def _loader_error(spec: DatasetSpec, e: BaseException) -> LoaderError:
    """A one-line error naming the spec for what ``datasets`` raises on a bad path, file or split."""
    where = getattr(e, "filename", None) or spec.path
    if isinstance(e, UnicodeDecodeError):
        return LoaderError(f"{spec.label}: {where}: not UTF-8 text at byte {e.start} ({e.reason}); expected a "
                           "UTF-8 json/jsonl/csv file")
    text = " ".join(str(e).split())
    return LoaderError(f"{spec.label} (source={spec.source}, split={spec.split!r}): cannot load: "
                       f"{type(e).__name__}: {text[:500]}")


def load_hf(spec: DatasetSpec, cache_dir: str | None = None):
    """A ``datasets.Dataset`` for a "hub", "files" or "disk" spec (the split already selected); errors are
    :class:`LoaderError` / :class:`OfflineError` naming the spec."""
    offline = _hub_offline_reason() if _is_remote(spec) else None
    if offline:
        _set_hub_offline()  # datasets' local cache still serves the dataset if it is there
    try:
        return _load_hf(spec, cache_dir)
    except (LoaderError, OfflineError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets/pyarrow raise many types for bad files and splits
        if offline or type(e).__name__ in ("OfflineModeIsEnabled", "LocalEntryNotFoundError") or \
                (_is_remote(spec) and isinstance(e, ConnectionError)):
            raise OfflineError(f"{spec.label}: could not fetch dataset {spec.path!r} from the Hugging Face Hub "
                               f"({offline or type(e).__name__}) and it is not in the local datasets cache; "
                               f"{_offline_hint(spec)}") from None
        if isinstance(e, (ValueError, OSError, KeyError, TypeError)) or "datasets" in type(e).__module__ \
                or "pyarrow" in type(e).__module__:
            raise _loader_error(spec, e) from None
        raise


def _load_hf(spec: DatasetSpec, cache_dir: str | None = None):
    """A ``datasets.Dataset`` for a "hub", "files" or "disk" spec (the split already selected)."""
    import datasets  # lazy: optional at import time

    if spec.source == "disk":
        obj = datasets.load_from_disk(spec.path)
        if isinstance(obj, datasets.DatasetDict):
            if spec.split not in obj:
                raise LoaderError(f"{spec.label}: split {spec.split!r} not in the saved DatasetDict "
                                  f"(has {sorted(obj)})")
            obj = obj[spec.split]
        ds = obj
    elif spec.source == "files":
        files = [spec.path, *spec.data_files] if spec.path else list(spec.data_files)
        builder = _file_builder(files, spec)
        ds = datasets.load_dataset(builder, data_files={spec.split: files}, split=spec.split, cache_dir=cache_dir)
    elif spec.source == "hub":
        kw: dict[str, Any] = {}
        if spec.data_files:
            kw["data_files"] = list(spec.data_files)
        ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, revision=spec.revision,
                                   data_dir=spec.data_dir, cache_dir=cache_dir, **kw)
    else:
        raise LoaderError(f"load_hf cannot load source {spec.source!r}")
    if spec.max_rows is not None:
        ds = ds.select(range(min(spec.max_rows, len(ds))))
    return ds


# ---------------------------------------------------------------------------------------------------- tfds

def to_python(x: Any) -> Any:
    """tfds values to plain Python: bytes -> str (UTF-8), numpy scalars/arrays -> Python scalars/lists."""
    if isinstance(x, bytes):
        return x.decode("utf-8")
    if isinstance(x, Mapping):
        return {k: to_python(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        if x.dtype.kind in ("S", "O"):
            return [to_python(v) for v in x.tolist()]
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [to_python(v) for v in x]
    return x


class TfdsRows(Sequence):
    """Random-access rows of a tfds data source, decoded to plain Python (see ``to_python``)."""

    def __init__(self, source, n: int | None = None):
        self._source = source
        self._n = len(source) if n is None else min(n, len(source))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return to_python(self._source[i])


def ensure_tfds_compat() -> bool:
    """Work around a missing dependency of tensorflow-datasets 4.9.x on Python >= 3.9.

    ``tensorflow_datasets.core.dataset_builder`` lazily imports the PyPI backport ``importlib_resources``
    and uses ``importlib_resources.abc.Traversable`` in ``DatasetBuilder.code_path``, which every
    ``download_and_prepare`` reaches (for the registered ``squad`` builder too) before any download; but
    tfds declares the backport only for Python < 3.9 and etils >= 1.10 no longer pulls it in, so preparing
    fails with ``ModuleNotFoundError: No module named 'importlib_resources'``. If the backport is absent,
    register the standard library's ``importlib.resources`` (which has ``abc.Traversable`` from Python
    3.11) under that name. Returns True if the alias was installed. Installing ``importlib_resources``
    makes this a no-op.
    """
    import importlib
    import importlib.util
    import sys

    if "importlib_resources" in sys.modules or importlib.util.find_spec("importlib_resources") is not None:
        return False
    std = importlib.import_module("importlib.resources")
    try:
        importlib.import_module("importlib.resources.abc")
    except ImportError:
        return False
    sys.modules["importlib_resources"] = std
    return True


def load_tfds(spec: DatasetSpec) -> TfdsRows:
    """``tfds.data_source`` rows (ArrayRecord random access), without TensorFlow."""
    ensure_tfds_compat()
    import tensorflow_datasets as tfds  # lazy: optional at import time

    name = f"{spec.path}/{spec.name}" if spec.name else spec.path
    data_dir = spec.data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # noqa: BLE001 - tfds: DatasetNotFoundError and friends
        raise LoaderError(f"tfds dataset {name!r}: {type(e).__name__}: {' '.join(str(e).split())[:400]}") from None
    if not builder.is_prepared():
        where = builder.data_dir
        if not spec.download:
            raise LoaderError(f"tfds dataset {name!r} is not prepared in {where} (dataset.download=false); "
                              f"prepare it with `tfds build {name} --file_format=array_record --data_dir DIR` "
                              "and set dataset.data_dir=DIR")
        why = "HF_DATASETS_OFFLINE=1" if offline_env() == "HF_DATASETS_OFFLINE" else (
            None if host_reachable("storage.googleapis.com") else
            "no network: storage.googleapis.com did not answer within 3 s")
        if why:
            raise OfflineError(f"tfds dataset {name!r} is not prepared in {where} and cannot be downloaded "
                               f"({why}); on a machine with network run `tfds build {name} "
                               "--file_format=array_record --data_dir DIR`, copy DIR here and set "
                               "dataset.data_dir=DIR")
        if data_dir is None:
            raise LoaderError(f"tfds dataset {name!r} is not prepared; set dataset.data_dir (or TFDS_DATA_DIR) "
                              "to the directory to prepare it in (it is not written into $HOME unasked)")
    try:
        src = tfds.data_source(name, split=spec.split, data_dir=data_dir, download=spec.download)
    except (ValueError, KeyError, OSError) as e:
        raise LoaderError(f"tfds dataset {name!r} split {spec.split!r}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:400]}") from None
    return TfdsRows(src, spec.max_rows)


# ------------------------------------------------------------------------------------------------- API

def load_rows(spec: DatasetSpec, cache_dir: str | None = None):
    """Rows of ``spec`` as a random-access sequence of dicts (a ``datasets.Dataset`` or ``TfdsRows``)."""
    if spec.source == "openslr":
        raise LoaderError(f"dataset.source=openslr ({spec.path}) is the raw LibriSpeech tree: speech tasks only "
                          "(task=librispeech)")
    if spec.source == "tfds":
        return load_tfds(spec)
    return load_hf(spec, cache_dir=cache_dir)


def load_task(spec: DatasetSpec, task, *, on_bad_example: str = "error", cache_dir: str | None = None,
              **task_options) -> tuple[list[TextExample], AdaptReport]:
    """Load the rows of ``spec`` and adapt them with ``task`` (a ``TASKS`` name or an adapter function).

    Returns the examples and the ``AdaptReport`` (rows kept, skipped per reason; also logged)."""
    rows = load_rows(spec, cache_dir=cache_dir)
    return adapt_rows(rows, task, dataset=spec.label, split=spec.split, on_bad_example=on_bad_example,
                      **task_options)


def load_known(name: str, split: str, *, on_bad_example: str = "error", cache_dir: str | None = None,
               **overrides) -> tuple[list[TextExample], AdaptReport]:
    """``load_task`` for one of ``KNOWN_DATASETS`` (``overrides`` replace task options)."""
    spec, task, opts = known_dataset(name, split)
    opts.update(overrides)
    return load_task(spec, task, on_bad_example=on_bad_example, cache_dir=cache_dir, **opts)


def task_examples(task: str, split: str, n: int, *, seed: int = 0, dataset: DatasetSpec | None = None,
                  adapter_options: Mapping | None = None) -> list[TextExample]:
    """The first ``n`` TextExamples of a task's ``split``: a synthetic task is generated (``seed``), a real task
    adapted from ``dataset`` (its split replaced by ``split``; malformed rows skipped and counted)."""
    from proactive_jax.data.synthetic import SYNTHETIC_TASKS, make_task

    if task in SYNTHETIC_TASKS:
        return make_task(task, n, seed=seed, split=split)
    if dataset is None:
        raise LoaderError(f"task {task!r} needs a dataset (dataset.source/path/...)")
    exs, _ = load_task(dataclasses.replace(dataset, split=split), task, on_bad_example="skip",
                       **dict(adapter_options or {}))
    return exs[:n]

