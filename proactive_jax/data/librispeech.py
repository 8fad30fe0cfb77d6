"""The LibriSpeech tree as OpenSLR distributes it, read directly (no ``datasets``, no torchcodec, no network).

Layout (``tar xzf dev-clean.tar.gz``)::

    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac
    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   # "<id> TRANSCRIPT" a line

:func:`librispeech_rows` walks one split (or several) and yields rows in the schema of the Hub's
``openslr/librispeech_asr`` with its audio undecoded (``Audio(decode=False)``)::

    {"id": "84-121123-0000", "audio": {"path": ".../84-121123-0000.flac"}, "text": "GO DO YOU HEAR",
     "speaker_id": 84, "chapter_id": 121123, "file": ".../84-121123-0000.flac"}

so that every consumer of those rows takes them unchanged: ``data.audio_tasks.librispeech`` /
``adapt_audio_rows`` (the FLAC is decoded with ``data.audio.read_audio``), ``data.audio_sources.prepare_audio``
(the FLAC bytes are copied) and ``RowSource``. Order: speakers, then chapters, then utterances, each by number
(the same on every machine, whatever the file system lists first). A malformed ``trans.txt`` line, a
transcript naming a FLAC that is not there, or a chapter without its transcript is one :class:`DataError`
naming the file (and line); a FLAC that no transcript lists is skipped with a warning.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

from proactive_jax.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100", "train-clean-360",
          "train-other-500")
# the Hub dataset's split names (openslr/librispeech_asr) -> the tree's directories
HUB_SPLITS = {"train.clean.100": "train-clean-100", "train.clean.360": "train-clean-360",
              "train.other.500": "train-other-500", "validation.clean": "dev-clean", "validation.other": "dev-other",
              "test.clean": "test-clean", "test.other": "test-other"}
# the Hub dataset's configs: (config, split) -> the tree's directories (joined with "+")
CONFIG_SPLITS = {
    "clean": {"train.100": "train-clean-100", "train.360": "train-clean-360",
              "train": "train-clean-100+train-clean-360", "validation": "dev-clean", "test": "test-clean"},
    "other": {"train.500": "train-other-500", "train": "train-other-500", "validation": "dev-other",
              "test": "test-other"},
    "all": {**HUB_SPLITS, "train": "train", "validation": "dev-clean+dev-other", "test": "test-clean+test-other"},
}
_SPLIT_ALIASES = {"valid": "validation", "dev": "validation"}
_ID = re.compile(r"(\d+)-(\d+)-(\d+)")


def resolve_split(split: str | None, config: str | None = None) -> str | None:
    """``split`` in the tree's names: with ``config`` (``clean`` / ``other`` / ``all``, as the Hub dataset's
    configs) ``test`` -> ``test-clean`` etc. (``valid`` / ``dev`` = ``validation``); without, as given."""
    if config is None or split is None:
        return split
    if config not in CONFIG_SPLITS:
        raise DataError(f"LibriSpeech config {config!r}: expected one of {sorted(CONFIG_SPLITS)} or none",
                        reason="bad split")
    table = CONFIG_SPLITS[config]
    key = _SPLIT_ALIASES.get(split, split)
    if key in table:
        return table[key]
    if key in SPLITS or key in HUB_SPLITS.values():
        return key
    raise DataError(f"LibriSpeech config {config!r} has no split {split!r} (expected one of {sorted(table)} or a "
                    f"directory name such as dev-clean)", reason="bad split")


def _is_split_dir(d: Path) -> bool:
    """``d/<speaker>/<chapter>/*.trans.txt`` exists (the first one found is enough)."""
    for spk in d.iterdir() if d.is_dir() else ():
        if spk.is_dir() and spk.name.isdigit():
            for ch in spk.iterdir():
                if ch.is_dir() and ch.name.isdigit() and any(ch.glob("*.trans.txt")):
                    return True
    return False


def split_dirs(root: str | Path, split: str | None = None, *, config: str | None = None) -> list[Path]:
    """The split directories of ``root`` that ``split`` names.

    ``root``: a split directory itself (``LibriSpeech/dev-clean``), the ``LibriSpeech`` directory holding
    splits, or the directory holding ``LibriSpeech``. ``split``: a directory name (``dev-clean``), a Hub
    split name (``validation.clean``), several joined with ``+``, ``train`` (every ``train-*`` split present),
    or None (``root`` itself when it is a split, else the only split under it); with ``config``, the Hub
    dataset's split names of that config (:func:`resolve_split`).
    """
    split = resolve_split(split, config)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech directory does not exist", reason="missing dataset")
    if _is_split_dir(root):
        if split is None or _names(split, [root.name]) == [root.name]:
            return [root]
        raise DataError(f"{root}: is the LibriSpeech split {root.name!r}, not {split!r} (name the directory "
                        f"holding the splits, or split={root.name!r})", reason="bad split")
    base = root
    present = sorted(d.name for d in base.iterdir() if d.is_dir() and _is_split_dir(d))
    if not present and (root / "LibriSpeech").is_dir():
        base = root / "LibriSpeech"
        present = sorted(d.name for d in base.iterdir() if d.is_dir() and _is_split_dir(d))
    if not present:
        raise DataError(f"{root}: no LibriSpeech split found (expected <split>/<speaker>/<chapter>/"
                        f"<speaker>-<chapter>.trans.txt, e.g. LibriSpeech/dev-clean/84/121123/84-121123.trans.txt)",
                        reason="missing dataset")
    if split is None:
        if len(present) > 1:
            raise DataError(f"{base}: holds the splits {present}; name one (split=...)", reason="bad split")
        return [base / present[0]]
    return [base / n for n in _names(split, present, base)]


def _names(split: str, present: list[str], base: Path | None = None) -> list[str]:
    out = []
    for part in split.split("+"):
        part = part.strip()
        name = HUB_SPLITS.get(part, part)
        if name == "train":
            found = [p for p in present if p.startswith("train-")]
        else:
            found = [name] if name in present else []
        if not found:
            if base is None:
                return []
            raise DataError(f"{base}: no split {part!r} (found {present})", reason="bad split")
        out += [f for f in found if f not in out]
    return out


def _numbered(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _chapter_rows(ch: Path, speaker: str) -> list[dict]:
    """The rows of one chapter directory, validated as a whole before any is returned."""
    trans = ch / f"{speaker}-{ch.name}.trans.txt"
    flacs = {p.stem for p in ch.glob("*.flac")}
    if not trans.is_file():
        others = sorted(p.name for p in ch.glob("*.trans.txt"))
        if not flacs and not others:
            return []
        raise DataError(f"{trans}: transcript file does not exist"
                        + (f" (found {others}: a chapter's transcript is <speaker>-<chapter>.trans.txt)" if others
                           else f" ({len(flacs)} FLAC files have no transcript)"), reason="missing transcript")
    try:
        lines = trans.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{trans}: not UTF-8 text ({e.reason} at byte {e.start})", reason="bad transcript") from None
    rows, seen = [], {}
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        uid, _, text = line.strip().partition(" ")
        m = _ID.fullmatch(uid)
        where = f"{trans}:{no}"
        if m is None:
            raise DataError(f"{where}: expected '<speaker>-<chapter>-<utterance> TRANSCRIPT', got {line[:60]!r}",
                            reason="bad transcript")
        if (m.group(1), m.group(2)) != (speaker, ch.name):
            raise DataError(f"{where}: utterance {uid} is not of speaker {speaker} chapter {ch.name} (the "
                            f"directory it is in)", reason="bad transcript")
        if not text.strip():
            raise DataError(f"{where}: utterance {uid} has an empty transcript", reason="bad transcript")
        if uid in seen:
            raise DataError(f"{where}: utterance {uid} is listed twice (first at line {seen[uid]})",
                            reason="bad transcript")
        seen[uid] = no
        flac = ch / f"{uid}.flac"
        if uid not in flacs:
            raise DataError(f"{where}: audio file {flac} does not exist", reason="missing audio")
        rows.append({"id": uid, "audio": {"path": str(flac)}, "text": " ".join(text.split()),
                     "speaker_id": int(speaker), "chapter_id": int(ch.name), "file": str(flac),
                     "_order": int(m.group(3))})
    unlisted = sorted(flacs - set(seen))
    if unlisted:
        logger.warning("%s: %d FLAC files have no transcript line and are skipped (first: %s.flac)", trans,
                       len(unlisted), unlisted[0])
    rows.sort(key=lambda r: r.pop("_order"))
    return rows


def librispeech_rows(root: str | Path, split: str | None = None, *, config: str | None = None,
                     max_rows: int | None = None) -> Iterator[dict]:
    """Rows ``{"id", "audio": {"path"}, "text", "speaker_id", "chapter_id", "file"}`` of the LibriSpeech tree
    under ``root`` (see :func:`split_dirs` for ``root`` and ``split``), in a fixed order, lazily: one chapter's
    transcript in memory at a time; ``max_rows`` stops after that many rows."""
    dirs = split_dirs(root, split, config=config)
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows={max_rows}: expected >= 1", reason="bad option")
    n = 0
    for d in dirs:
        for spk in _numbered(d):
            for ch in _numbered(spk):
                for row in _chapter_rows(ch, spk.name):
                    yield row
                    n += 1
                    if max_rows is not None and n >= max_rows:
                        return
    if n == 0:
        raise DataError(f"{root}: the LibriSpeech split(s) {[d.name for d in dirs]} hold no utterances",
                        reason="empty dataset")


def load_librispeech(root: str | Path, split: str | None = None, *, config: str | None = None,
                     max_rows: int | None = None) -> list[dict]:
    """:func:`librispeech_rows` as a list (random access: ``data.audio_sources.RowSource``, the eval's rows,
    ``data.audio_tasks.adapt_audio_rows``)."""
    return list(librispeech_rows(root, split, config=config, max_rows=max_rows))
