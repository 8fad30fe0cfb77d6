"""Synthetic speech for the embedded demo: tone-words made in numpy (no TTS, deterministic).

A *syllable* is a short chord (two sine tones with a raised-cosine envelope and a little noise); a *word*
is 2-3 syllables; confusable words share their first syllable (``ka-mo`` / ``ka-ri-su``), so a word is
ambiguous until its last syllable has been heard. Every utterance draws a speaking rate (syllables of
70-150 ms) and gaps between words (20-200 ms), so where a word ends in the audio (hence in chunks) varies
and a fixed wait-k schedule is wrong.

Tasks (:func:`make_speech_task`):

- ``speech-transcribe`` (LibriSpeech-like): 3-6 words -> their transcript;
- ``speech-lookup`` (Spoken-SQuAD-like): the question names a word (text, in the prompt); the audio is
  5-8 distinct words; the answer is the word spoken right after it.

Each item also records where every word ends (in samples), from which the evidence chunk of each target
word follows (used for the premature-write rate).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

SR = 16000
# syllable -> (low tone, high tone) in Hz: 4 low x 3 high tones, each a different mel band
_LOW, _HIGH = (250, 450, 750, 1100), (1700, 2700, 4200)
SYLLABLES = {name: (_LOW[i % 4], _HIGH[i // 4]) for i, name in enumerate(
    ("ka", "mo", "ri", "su", "te", "lu", "no", "pi", "ba", "do", "fe", "gu"))}
# groups sharing their first syllable are confusable until the end of the word
WORDS = ("ka-mo", "ka-ri-su", "ka-te", "mo-lu", "mo-no-pi", "ri-ba", "ri-do-fe", "su-gu", "su-ka-lu",
         "te-pi", "lu-no", "no-fe-do", "pi-ba", "ba-gu-te", "do-su")
SPEECH_TASKS = ("speech-transcribe", "speech-lookup")


@dataclasses.dataclass(frozen=True)
class SpeechItem:
    id: str
    task: str
    waveform: np.ndarray  # float32, 16 kHz
    words: tuple  # the spoken words
    word_ends: tuple  # sample index where each spoken word ends
    question: str | None  # speech-lookup: the word asked about
    target_words: tuple  # the answer / transcript, as words
    evidence_words: tuple  # for each target word, the index of the spoken word whose end is the evidence


def _syllable(name: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    n = max(1, int(seconds * SR))
    t = np.arange(n) / SR
    lo, hi = SYLLABLES[name]
    env = np.sin(np.pi * np.arange(n) / n) ** 2
    x = 0.5 * np.sin(2 * np.pi * lo * t) + 0.35 * np.sin(2 * np.pi * hi * t + rng.uniform(0, np.pi))
    return (env * x * rng.uniform(0.6, 1.0) + 0.003 * rng.standard_normal(n)).astype(np.float32)


def speak(words, rng: np.random.Generator, *, max_seconds: float | None = None) -> tuple[np.ndarray, tuple]:
    """The waveform of ``words`` at a random rate and with random gaps; and where each word ends."""
    rate = rng.uniform(0.07, 0.15)  # seconds per syllable for this utterance
    parts = [0.005 * rng.standard_normal(int(rng.uniform(0.03, 0.12) * SR)).astype(np.float32)]
    ends, total = [], parts[0].size
    for w in words:
        for syl in w.split("-"):
            s = _syllable(syl, rate * rng.uniform(0.85, 1.15), rng)
            parts.append(s)
            total += s.size
        ends.append(total)
        gap = 0.005 * rng.standard_normal(int(rng.uniform(0.02, 0.2) * SR)).astype(np.float32)
        parts.append(gap)
        total += gap.size
    x = np.concatenate(parts)
    if max_seconds is not None and x.size > max_seconds * SR:
        raise ValueError(f"synthetic utterance of {x.size / SR:.2f} s exceeds max_seconds={max_seconds}")
    return x, tuple(ends)


def make_speech_task(task: str, n: int, seed: int = 0, split: str = "train", max_seconds: float = 4.0) -> list:
    """``n`` deterministic items of ``task``; the split changes the seed stream (disjoint draws)."""
    if task not in SPEECH_TASKS:
        raise ValueError(f"unknown speech task {task!r}; expected one of {SPEECH_TASKS}")
    salt = {"train": 0, "valid": 1, "test": 2, "calib": 3}[split]
    rng = np.random.default_rng([seed, salt, SPEECH_TASKS.index(task)])
    items = []
    while len(items) < n:
        if task == "speech-transcribe":
            words = tuple(rng.choice(WORDS, int(rng.integers(3, 7))))
            question, target, evidence = None, words, tuple(range(len(words)))
        else:
            words = tuple(rng.choice(WORDS, int(rng.integers(5, 9)), replace=False))
            q = int(rng.integers(0, len(words) - 1))
            question, target, evidence = words[q], (words[q + 1],), (q + 1,)
        try:
            wave, ends = speak(words, rng, max_seconds=max_seconds)
        except ValueError:
            continue  # too long for the encoder window: draw again
        items.append(SpeechItem(f"{task}-{split}-{len(items)}", task, wave, words, ends, question, target, evidence))
    return items
