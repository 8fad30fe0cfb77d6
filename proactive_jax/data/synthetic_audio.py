"""Synthetic speech for the embedded demo: tone-words made in numpy (no TTS, deterministic).

A *syllable* is a short chord (two sine tones with a raised-cosine envelope and a little noise); a *word*
is 2-3 syllables; confusable words share their first syllable (``ka-mo`` / ``ka-na-te``), so a word is
ambiguous until its last syllable has been heard. Every utterance draws a speaking rate (syllables of
70-150 ms) and gaps between words (20-200 ms), so where a word ends in the audio (hence in chunks) varies
and a fixed wait-k schedule is wrong.

Tasks (:func:`make_speech_task`):

- ``speech-transcribe`` (LibriSpeech-like): 3-6 words -> their transcript;
- ``speech-lookup`` (Spoken-SQuAD-like): the question names a category (text, in the prompt: a category is
  the group of words sharing one first syllable); the audio is 3-6 distinct words, exactly one of them of
  that category, at a random position; the answer is that word. Hearing its first syllable says the answer
  is coming but not which word of the group it is: the answer is determined only by its last syllable.

Each item also records where every word ends (in samples), from which the evidence chunk of each target
word follows (used for the premature-write rate).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

SR = 16000
# syllable -> (low tone, high tone) in Hz: 4 low x 4 high tones, each a different mel band
_LOW, _HIGH = (250, 450, 750, 1100), (1700, 2500, 3600, 5200)
SYLLABLES = {name: (_LOW[i % 4], _HIGH[i // 4]) for i, name in enumerate(
    ("ka", "mo", "ri", "su", "te", "lu", "no", "pi", "ba", "do", "fe", "gu", "na", "ze", "vo", "ha"))}
# 3 categories of 4 words. A word is its category's syllable (ka | ri | su: only ever first), for 3-syllable words
# the filler "na" (only ever second), then the word's own last syllable (used by no other word): the category is
# known from the first syllable on, the word only at its last. A word is thus identified by one syllable, wherever
# it is spoken; with syllables reused across words and positions (ka-ri-su, su-ka-lu, ...) a tiny decoder had to
# parse word boundaries first and never learnt the lookup (docs/measurements.md: speech). 9 specials + 12 words + 3 category
# tokens = the tiny-audio preset's 24 ids.
GROUPS = {"ka": ("ka-mo", "ka-na-te", "ka-lu", "ka-na-no"), "ri": ("ri-ba", "ri-na-do", "ri-fe", "ri-na-gu"),
          "su": ("su-pi", "su-na-ze", "su-vo", "su-na-ha")}
WORDS = tuple(w for g in GROUPS.values() for w in g)
CATEGORIES = tuple(f"cat:{g}" for g in GROUPS)  # the speech-lookup question tokens
CATEGORY_OF = {w: f"cat:{g}" for g, ws in GROUPS.items() for w in ws}
# the speech tasks' word vocabulary: these special tokens, then WORDS, then CATEGORIES (ids are positions)
SPECIALS = ("<pad>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|user_end|>",
            "<|assistant|>", "<task:transcribe>", "<task:lookup>")
PAD, EOS, AUDIO, BOS_A, EOS_A, USER_END, ASSISTANT, T_TRANSCRIBE, T_LOOKUP = range(len(SPECIALS))


def speech_vocabulary() -> list[str]:
    """The tiny speech models' vocabulary (no tokenizer): special tokens, tone-words, category questions."""
    return list(SPECIALS) + list(WORDS) + list(CATEGORIES)


SPEECH_TASKS = ("speech-transcribe", "speech-lookup")
# default spoken words per utterance, [low, high) (with the previous lexicon speech-lookup trained to 97% with one
# word per utterance and stayed at chance with 3-6: see docs/measurements.md, speech targets)
WORDS_PER_UTTERANCE = (3, 7)


@dataclasses.dataclass(frozen=True)
class SpeechItem:
    id: str
    task: str
    waveform: np.ndarray  # float32, 16 kHz
    words: tuple  # the spoken words
    word_ends: tuple  # sample index where each spoken word ends
    question: str | None  # speech-lookup: the category asked about (a CATEGORIES name)
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


def make_speech_task(task: str, n: int, seed: int = 0, split: str = "train", max_seconds: float = 4.0,
                     words_per_utterance: tuple[int, int] = WORDS_PER_UTTERANCE) -> list:
    """``n`` deterministic items of ``task``; the split changes the seed stream (disjoint draws); each utterance
    has ``low <= words < high`` spoken words (``words_per_utterance = (low, high)``)."""
    if task not in SPEECH_TASKS:
        raise ValueError(f"unknown speech task {task!r}; expected one of {SPEECH_TASKS}")
    low, high = (int(v) for v in words_per_utterance)
    n_max = len(WORDS) - max(len(g) for g in GROUPS.values()) + 1  # lookup: distinct words, one of the category
    if not 1 <= low < high or (task == "speech-lookup" and high - 1 > n_max):
        raise ValueError(f"words_per_utterance={tuple(words_per_utterance)}: expected (low, high) with 1 <= low < high"
                         + (f" <= {n_max + 1} for speech-lookup" if task == "speech-lookup" else ""))
    salt = {"train": 0, "valid": 1, "test": 2, "calib": 3}[split]
    rng = np.random.default_rng([seed, salt, SPEECH_TASKS.index(task)])
    items, misses = [], 0
    while len(items) < n:
        if task == "speech-transcribe":
            words = tuple(str(w) for w in rng.choice(WORDS, int(rng.integers(low, high))))
            question, target, evidence = None, words, tuple(range(len(words)))
        else:
            n_words = int(rng.integers(low, high))
            cat = str(rng.choice(list(GROUPS)))
            answer = str(rng.choice(GROUPS[cat]))
            others = [w for w in WORDS if CATEGORY_OF[w] != f"cat:{cat}"]
            words = [str(w) for w in rng.choice(others, n_words - 1, replace=False)]
            pos = int(rng.integers(0, n_words))
            words = tuple(words[:pos] + [answer] + words[pos:])
            question, target, evidence = f"cat:{cat}", (answer,), (pos,)
        try:
            wave, ends = speak(words, rng, max_seconds=max_seconds)
        except ValueError:
            misses += 1  # too long for the encoder window: draw again
            if misses > 1000 + 10 * n:
                raise ValueError(f"{task}: utterances of {low}-{high - 1} words do not fit max_seconds={max_seconds} "
                                 f"(rejected {misses} draws); use fewer words or a longer window") from None
            continue
        items.append(SpeechItem(f"{task}-{split}-{len(items)}", task, wave, words, ends, question, target, evidence))
    return items
