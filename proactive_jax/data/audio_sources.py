"""Random-access audio row sources and the ``prepare-audio`` copy into ArrayRecord shards (split from
:mod:`.audio_stream`, which streams examples from these sources and re-exports every name here).

Row schema: ``{"audio": {"bytes" | "path" | "array", "sampling_rate"?}, "text", "id", ...}``; records are
magic + u32 header length + JSON header + the audio payload (never pickles)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from proactive_jax.errors import DataError
from proactive_jax.data.audio import SAMPLING_RATE

logger = logging.getLogger(__name__)

RECORD_MAGIC = b"PJAR1"


# --------------------------------------------------------------------------------------------- records

def encode_record(row: Mapping) -> bytes:
    """One row as bytes: magic, u32 header length, JSON header, audio payload (no pickles).

    ``row["audio"]`` is encoded file bytes (``{"bytes"}``: stored as they are), or samples (``{"array",
    "sampling_rate"}`` or a bare array: stored as little-endian float32 / int16)."""
    audio = row.get("audio")
    header = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()
              if k != "audio" and isinstance(v, (str, bytes, int, float, bool, type(None)))}
    if isinstance(audio, Mapping) and audio.get("bytes"):
        payload, header["encoding"] = bytes(audio["bytes"]), "file"
    else:
        arr = audio.get("array") if isinstance(audio, Mapping) else audio
        if arr is None:
            raise DataError(f"row {row.get('id', '?')!r}: no audio bytes or samples to store", reason="bad audio")
        a = np.asarray(arr)
        a = a.astype("<i2") if a.dtype.kind in "iu" and a.dtype.itemsize <= 2 else a.astype("<f4")
        payload = a.tobytes()
        header.update(encoding=str(a.dtype), shape=list(a.shape),
                      sampling_rate=int(audio.get("sampling_rate") or SAMPLING_RATE)
                      if isinstance(audio, Mapping) else SAMPLING_RATE)
    h = json.dumps(header, sort_keys=True).encode()
    return RECORD_MAGIC + struct.pack("<I", len(h)) + h + payload


def decode_record(data: bytes, where: str = "record") -> dict:
    """The row of :func:`encode_record` (audio as ``{"bytes"}`` or ``{"array", "sampling_rate"}``)."""
    if data[:len(RECORD_MAGIC)] != RECORD_MAGIC:
        raise DataError(f"{where}: not a proactive-jax audio record (magic {data[:5]!r})", reason="bad record")
    (n,) = struct.unpack("<I", data[5:9])
    header = json.loads(data[9:9 + n])
    payload = data[9 + n:]
    enc = header.pop("encoding")
    if enc == "file":
        header["audio"] = {"bytes": payload}
    else:
        shape = header.pop("shape")
        header["audio"] = {"array": np.frombuffer(payload, enc).reshape(shape),
                           "sampling_rate": header.pop("sampling_rate")}
    return header


def _first_answer(answer):
    """Spoken-SQuAD's ``answer`` (text or a list of text) -> the first non-empty one (the training target)."""
    answers = [answer] if isinstance(answer, (str, bytes)) else list(answer) if isinstance(answer, (list, tuple)) else []
    answers = [a.decode() if isinstance(a, bytes) else a for a in answers]
    return next((a.strip() for a in answers if isinstance(a, str) and a.strip()), None)


def _librispeech_row(row: Mapping) -> dict:
    """datasets / tfds rows -> the stored schema ``{"audio", "text", "id", "question"?, ...}``.

    LibriSpeech (datasets ``audio`` / tfds ``speech``) keeps its fields; Spoken-SQuAD in the AudioLLMs layout
    (``{"context": audio, "instruction": question, "answer": text or list}``, as ``data.audio_tasks.spoken_squad``
    reads it) becomes ``audio`` = the context, ``question`` = the instruction, ``text`` = the first answer."""
    out = dict(row)
    if "audio" not in out and "speech" in out:  # tfds: int16 samples at 16 kHz
        out["audio"] = {"array": np.asarray(out.pop("speech")), "sampling_rate": SAMPLING_RATE}
    if "audio" not in out and "context" in out:  # AudioLLMs Spoken-SQuAD: the context is the audio
        out["audio"] = out.pop("context")
        if "instruction" in out and "question" not in out:
            q = out.pop("instruction")
            out["question"] = q.decode() if isinstance(q, bytes) else q
        if "answer" in out and "text" not in out:
            out["text"] = _first_answer(out.pop("answer"))
    audio = out.get("audio")
    if isinstance(audio, Mapping) and not audio.get("bytes") and audio.get("array") is None and audio.get("path"):
        out["audio"] = {"bytes": Path(audio["path"]).read_bytes()}
    return out


def prepare_audio(rows: Iterable[Mapping], out_dir: str | Path, *, rows_per_shard: int = 2048,
                  name: str = "audio", overwrite: bool = False) -> dict:
    """Copy rows (an iterable, e.g. a streaming ``datasets`` split with ``Audio(decode=False)``, tfds rows,
    manifest rows) into ArrayRecord shards ``<out_dir>/<name>-NNNNN.array_record`` + ``index.json``.

    One pass, one row in memory at a time; audio bytes are copied, not decoded (each file's header is read to
    refuse what no decoder reads; the samples are checked when streaming, under ``on_bad_audio``). The set is
    built in a staging directory beside ``out_dir`` and moved into place only when complete, so a failure (a bad
    row, a full disk) leaves no partial set and, with ``overwrite``, the previous set intact. Returns the index."""
    out = Path(out_dir)
    if (out / "index.json").exists() and not overwrite:
        raise DataError(f"{out}: already holds a prepared set (index.json); choose another OUT_DIR or --overwrite",
                        reason="exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        index = _write_shards(rows, stage, rows_per_shard, name, out)
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.info("prepare_audio: %d rows in %d ArrayRecord shards under %s", index["rows"], len(index["shards"]), out)
    return index


def _write_shards(rows, stage: Path, rows_per_shard: int, name: str, out: Path) -> dict:
    from array_record.python.array_record_module import ArrayRecordWriter

    shards, counts, writer, n = [], [], None, 0
    try:
        for row in rows:
            if writer is None or counts[-1] >= rows_per_shard:
                if writer is not None:
                    writer.close()
                shards.append(f"{name}-{len(shards):05d}.array_record")
                writer = ArrayRecordWriter(str(stage / shards[-1]), "group_size:1")
                counts.append(0)
            stored = _librispeech_row(row)
            _check_audio_header(stored.get("audio"), f"row {n} ({_row_label(row, stored)})")
            writer.write(encode_record(stored))
            counts[-1] += 1
            n += 1
        if writer is not None:
            writer.close()
            writer = None
    except RuntimeError as e:  # ArrayRecord's write errors (a full disk among them) are RuntimeErrors, not OSErrors
        raise DataError(f"{out}: writing the ArrayRecord shards failed ({' '.join(str(e).split())[:300]}); no set was "
                        "written and any existing set is intact", reason="write failed") from None
    finally:
        if writer is not None:
            try:
                writer.close()
            except RuntimeError:
                pass
    if n == 0:
        raise DataError(f"prepare_audio: no rows to write to {out}", reason="empty source")
    index = {"format": 1, "rows": n, "shards": shards, "counts": counts}
    (stage / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _row_label(row: Mapping, stored: Mapping) -> str:
    """The row's audio file when it came from one, else its id."""
    audio = row.get("audio")
    if isinstance(audio, Mapping) and audio.get("path") and not audio.get("bytes"):
        return str(audio["path"])
    return str(stored.get("id", "no id"))


def _check_audio_header(audio, where: str) -> None:
    """Refuse stored audio bytes that no decoder reads (a text file named .wav, an empty or cut file), naming the
    row; arrays and rows without audio pass (their checks run when streaming)."""
    if not (isinstance(audio, Mapping) and audio.get("bytes")):
        return
    try:
        import soundfile as sf
    except ImportError:
        return
    try:
        sf.info(io.BytesIO(bytes(audio["bytes"])))
    except Exception as e:  # soundfile raises its own error types (LibsndfileError, RuntimeError, ...)
        why = re.sub(r"^Error opening .*?: ", "", " ".join(str(e).split()))[:200]  # soundfile names the BytesIO
        raise DataError(f"{where}: audio is not decodable ({why})", reason="bad audio") from None


def _publish(stage: Path, out: Path) -> None:
    """Move the complete set in ``stage`` to ``out``; an existing set there is replaced only now."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if (out / "index.json").exists():  # a previous set: swap whole directories, then drop the old one
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    for p in stage.iterdir():  # out holds other files (no set): add the shards and the index last
        if p.name != "index.json":
            os.replace(p, out / p.name)
    os.replace(stage / "index.json", out / "index.json")
    stage.rmdir()


# --------------------------------------------------------------------------------------------- sources

class ArrayRecordAudioSource:
    """Random access over the shards of :func:`prepare_audio` (opened lazily: picklable to workers)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        p = self.directory / "index.json"
        if not p.is_file():
            raise DataError(f"{self.directory}: no index.json (write the shards with prepare_audio)",
                            reason="missing index")
        self.index = json.loads(p.read_text())
        self.name = str(self.directory)
        self._src = None

    def __len__(self) -> int:
        return int(self.index["rows"])

    def __getstate__(self):
        return {"directory": self.directory, "index": self.index, "name": self.name, "_src": None}

    def __getitem__(self, i: int) -> dict:
        if self._src is None:
            import grain

            self._src = grain.sources.ArrayRecordDataSource([str(self.directory / s) for s in self.index["shards"]])
        return decode_record(self._src[int(i)], f"{self.name} row {i}")


class ManifestSource:
    """A WAV + JSONL manifest (``{"audio": path, "text", "id"?, "question"?}`` a line), read by byte offset:
    memory holds one int64 per line, not the rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: manifest does not exist")
        offsets, lines, pos = [], [], 0
        with open(self.path, "rb") as f:
            for no, line in enumerate(f, 1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(no)
                pos += len(line)
        if not offsets:
            raise DataError(f"{self.path}: manifest holds no rows", reason="empty manifest")
        self.offsets, self.lines = np.asarray(offsets, np.int64), np.asarray(lines, np.int64)
        self.name = str(self.path)

    def __len__(self) -> int:
        return int(self.offsets.size)

    def __getitem__(self, i: int) -> dict:
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            line = f.readline()
        where = f"{self.path}:{int(self.lines[i])}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})", reason="bad json") from None
        if not isinstance(row, dict) or not isinstance(row.get("audio"), str):
            raise DataError(f"{where}: expected a JSON object with an 'audio' path", reason="bad json")
        row["audio"] = {"path": str(self.path.parent / row["audio"])}
        row.setdefault("id", f"{self.path.stem}/{int(self.lines[i])}")
        return row


class RowSource:
    """Any map-style rows (tfds ``data_source``, ``datasets.Dataset``, a list) with a name for errors."""

    def __init__(self, rows, name: str = "rows"):
        self.rows, self.name = rows, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return _librispeech_row(self.rows[int(i)])


class SyntheticAudioSource:
    """``n`` deterministic utterances of ``min_seconds``-``max_seconds`` (chords + noise; row i depends on
    ``(seed, i)`` only, nothing is held in memory): the tests' and the benchmark's source."""

    WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

    def __init__(self, n: int, seed: int = 0, min_seconds: float = 10.0, max_seconds: float = 15.0):
        self.n, self.seed, self.min_seconds, self.max_seconds = int(n), int(seed), min_seconds, max_seconds
        self.name = f"synthetic(n={n}, seed={seed})"

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        n = int(rng.uniform(self.min_seconds, self.max_seconds) * SAMPLING_RATE)
        t = np.arange(n) / SAMPLING_RATE
        f0, f1 = rng.uniform(150, 400), rng.uniform(900, 3000)
        x = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * f1 * t) + 0.01 * rng.standard_normal(n)
        words = " ".join(rng.choice(self.WORDS, int(rng.integers(5, 30))))
        return {"audio": {"array": x.astype(np.float32), "sampling_rate": SAMPLING_RATE}, "text": words,
                "id": f"synthetic/{int(i)}"}


def as_source(source):
    """A random-access source: a :func:`prepare_audio` directory, a ``.jsonl`` manifest, a LibriSpeech split
    directory as OpenSLR ships it (:mod:`.librispeech`; its rows are listed up front, the FLACs read when
    streamed), or map-style rows."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            if not (p / "index.json").exists() and _is_librispeech_tree(p):
                from proactive_jax.data.librispeech import load_librispeech

                return RowSource(load_librispeech(p), str(p))
            return ArrayRecordAudioSource(p)
        if p.suffix == ".jsonl":
            return ManifestSource(p)
        raise DataError(f"{p}: expected a prepare_audio directory (index.json + ArrayRecord shards) or a .jsonl "
                        "manifest", reason="bad source")
    if hasattr(source, "__len__") and hasattr(source, "__getitem__"):
        if isinstance(source, (ArrayRecordAudioSource, ManifestSource, RowSource, SyntheticAudioSource)):
            return source
        return RowSource(source, str(getattr(source, "name", None) or type(source).__name__))
    raise DataError(f"{type(source).__name__}: an iterable-only (streaming) source has no random access; write it "
                    "to ArrayRecord shards once with prepare_audio(rows, out_dir) and stream that directory",
                    reason="bad source")


def _is_librispeech_tree(p: Path) -> bool:
    from proactive_jax.data.librispeech import split_dirs

    try:
        split_dirs(p)
    except DataError as e:
        return getattr(e, "reason", None) == "bad split"  # a tree, but several splits: let split_dirs say so
    return True


# --------------------------------------------------------------------------------------------- CLI

def spec_rows(spec: str, *, config: str | None = None, split: str = "train", max_rows: int | None = None,
              cache_dir: str | None = None, data_dir: str | None = None):
    """``(rows iterable, label)`` of a ``proactive-jax prepare-audio`` SPEC: a ``.jsonl`` manifest, ``tfds:NAME``,
    ``disk:DIR``, ``openslr:DIR`` (the LibriSpeech tree as downloaded from OpenSLR: ``LibriSpeech/``, a split
    inside it, or the directory holding it; ``split`` names the split directory, e.g. ``dev-clean``, a Hub split
    name such as ``train.clean.360``, ``a+b``, ``train`` = every train-* split present; with ``config`` clean /
    other / all, the Hub dataset's names of that config, e.g. ``--config clean --split test``) or ``[hub:]ID`` (a Hub
    id or a local dataset directory), with ``config`` / ``split``."""
    from proactive_jax.data.audio_tasks import load_audio_rows
    from proactive_jax.data.loaders import DatasetSpec

    if spec.startswith("openslr:"):
        from proactive_jax.data.librispeech import librispeech_rows, split_dirs

        root = spec[len("openslr:"):]
        if not root:
            raise DataError(f"prepare-audio SPEC {spec!r}: empty directory", reason="bad spec")
        dirs = split_dirs(root, split, config=config)  # errors now, before any shard is written
        return (librispeech_rows(root, split, config=config, max_rows=max_rows),
                f"LibriSpeech {'+'.join(d.name for d in dirs)}")

    if spec.endswith(".jsonl"):
        src = ManifestSource(spec)  # FileNotFoundError / DataError: one line naming the file
        n = len(src) if max_rows is None else min(len(src), max_rows)

        def manifest_rows():
            for i in range(n):
                row = src[i]
                path = Path(row["audio"]["path"])
                if not path.is_file():
                    raise DataError(f"{spec}:{int(src.lines[i])}: audio file {path} does not exist", reason="bad audio")
                yield row

        return manifest_rows(), spec
    source, _, path = spec.partition(":") if spec.split(":", 1)[0] in ("hub", "tfds", "disk") else ("hub", "", spec)
    if not path:
        raise DataError(f"prepare-audio SPEC {spec!r}: empty dataset name", reason="bad spec")
    ds = DatasetSpec(source=source, path=path, name=config, split=split, max_rows=max_rows, data_dir=data_dir)
    rows = load_audio_rows(ds, cache_dir)
    if hasattr(rows, "__len__") and hasattr(rows, "__getitem__"):
        return (rows[i] for i in range(len(rows))), ds.label
    return iter(rows), ds.label
