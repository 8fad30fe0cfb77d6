"""Unsaturated synthetic tasks for the study (docs/study.md): harder than ``lookup`` / ``word-map``, each with
an exact oracle policy and a source-blind (chance) baseline.

``ledger`` (QA-like, evidence corrected later). The stream is ``n_slots`` slots of 4 words: a statement
``KEY is VALUE .``, a tentative statement ``KEY maybe VALUE .``, a correction ``no KEY is VALUE`` or 4 filler
words. Each key has a *story* of at most two mentions (``LEDGER_STORIES``): a statement may be repeated or
corrected; a tentative statement may be confirmed, changed by a later statement, retracted by a correction, or
left alone. The prompt asks ``what is KEY ?``; the answer is the value of the key's last mention. Writing at the
first evidence is right only for the stories whose first value stands (50% under the default mix); the oracle
waits until no later mention can change the answer (:func:`ledger_determined_at`).

``verb-final`` (MT-like, long-range reordering, 2,300-word lexicon). Source clauses are verb-final,
``NP NP [PREP NP] VERB`` (NP = ``DET [ADJ] NOUN``), joined by ``and``; the target of a clause is SVO,
``NP' VERB' NP' [PREP' NP']`` with NP' = ``DET' NOUN' [ADJ']`` (German -> English in miniature): the target's
second constituent needs the clause's last source word, so a fixed lag either waits for the longest clause
or writes the verb blind. Words are pseudo-words of a fixed lexicon (:func:`lexicon`).

``synonym-map`` (several valid outputs). The source is 3..7 concept words, each optionally followed by the
intensifier ``plus``; each target word is *any* member of the concept's synonym set (sizes 1..128 by
concept; another, disjoint set when intensified). ``target_text`` is one uniform draw; ``references[0]`` is
the pattern ``a|b|c x|y ...`` of every position's valid set (scored by ``study_metrics.multiref``), so the
full view's distribution (uniform over a set) carries information the one-hot target does not.

Every example's ``meta`` holds ``oracle`` (per target word, then the end-of-turn token: the smallest read
count whose view determines the target prefix up to it, exact under the generator's support; tested by
exhaustive enumeration) and ``external`` (the read counts a plausible external annotator gives: ledger the
first evidence, verb-final the length-ratio diagonal, synonym-map the concept word without its look-ahead).
Generation is a pure function of (task, config, seed, split); splits are disjoint by a hash of prompt and
source (80/10/10), as in :mod:`.synthetic`. This module imports nothing above ``data.render`` (so
:mod:`.synthetic` can register these tasks without an import cycle).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections import Counter
from typing import Sequence

import numpy as np

from proactive_jax.data.render import TextExample, split_words

SPLITS = ("train", "valid", "test")
_SPLIT_BOUNDS = {"train": (0, 800), "valid": (800, 900), "test": (900, 1000)}

# ------------------------------------------------------------------------------------------------ words

LEDGER_KEYS = ("locker", "vault", "drawer", "cabinet", "chest", "crate", "trunk", "closet", "pouch", "satchel",
               "hamper", "bin")
LEDGER_VALUES = ("amber", "cobalt", "crimson", "ivory", "jade", "olive", "onyx", "topaz", "coral", "indigo",
                 "violet", "umber")
LEDGER_FILLERS = ("um", "er", "well", "okay", "right", "anyway", "hmm", "sure")
LEDGER_FORM_WORDS = ("is", "maybe", "no", ".")
# story: (first kind, second mention or None); second: "same" = statement of the first value, "is" = a
# statement of another value, "no" = a correction to another value
LEDGER_STORIES = {"single": ("is", None), "repeat": ("is", "same"), "correct": ("is", "no"),
                  "confirm": ("maybe", "same"), "change": ("maybe", "is"), "retract": ("maybe", "no"),
                  "tentative": ("maybe", None)}
PROMPTS = {"ledger": "what is {key} ?", "verb-final": "reorder :", "synonym-map": "paraphrase :"}
SYN_INTENSIFIER = "plus"
VF_CONJ = ("and", "und")

LEXICON_SEED = 20260601
VF_SIZES = {"det": 6, "adj": 240, "noun": 640, "verb": 240, "prep": 24}  # per side: 1,150 source + 1,150 target
SYN_CONCEPTS = 48
SYN_BASE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)  # concept i's synonym set size: SYN_BASE_SIZES[i % 8]
SYN_INTENSE_SIZES = (1, 2, 4, 8)  # its intensified set's size: SYN_INTENSE_SIZES[i % 4]
_FIXED_WORDS = (LEDGER_KEYS + LEDGER_VALUES + LEDGER_FILLERS + LEDGER_FORM_WORDS + VF_CONJ + (SYN_INTENSIFIER,)
                + ("what", "?", "reorder", "paraphrase", ":"))


@functools.lru_cache(maxsize=None)
def lexicon() -> dict:
    """The fixed pseudo-word lexicon (a pure function of ``LEXICON_SEED`` and the sizes above).

    ``vf_src[cls]`` / ``vf_tgt[cls]``: verb-final words per class (source CVCVCV, target CVCVC: disjoint by
    shape; ``vf_tgt[cls][i]`` translates ``vf_src[cls][i]``); ``syn_concepts``: CVCV concept words;
    ``syn_base[i]`` / ``syn_intense[i]``: concept i's synonym sets (CVCVCVC)."""
    rng = np.random.default_rng(LEXICON_SEED)
    syll = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    taken = set(_FIXED_WORDS)

    def fresh(n, n_syll, tail=""):
        out = []
        while len(out) < n:
            w = "".join(syll[int(i)] for i in rng.integers(len(syll), size=n_syll))
            w += tail[int(rng.integers(len(tail)))] if tail else ""
            if w not in taken:
                taken.add(w)
                out.append(w)
        return tuple(out)

    lex = {"vf_src": {c: fresh(n, 3) for c, n in VF_SIZES.items()},
           "vf_tgt": {c: fresh(n, 2, "nrstk") for c, n in VF_SIZES.items()},
           "syn_concepts": fresh(SYN_CONCEPTS, 2)}
    lex["syn_base"] = tuple(fresh(SYN_BASE_SIZES[i % 8], 3, "lmnr") for i in range(SYN_CONCEPTS))
    lex["syn_intense"] = tuple(fresh(SYN_INTENSE_SIZES[i % 4], 3, "lmnr") for i in range(SYN_CONCEPTS))
    return lex


def study_words() -> list[str]:
    """Every word the study tasks can emit (prompts, sources, targets), in a fixed order, no duplicates. The
    study tokenizer's vocabulary is ``synthetic.vocabulary()`` + these words not already in it."""
    lex = lexicon()
    words = list(_FIXED_WORDS)
    for side in ("vf_src", "vf_tgt"):
        for c in VF_SIZES:
            words += lex[side][c]
    words += lex["syn_concepts"]
    for sets in (lex["syn_base"], lex["syn_intense"]):
        for s in sets:
            words += s
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class LedgerConfig:
    n_slots: int = 8  # 4 words each: M = 4 * n_slots
    n_keys: int = 8
    n_values: int = 8
    n_fillers: int = 8
    p_filler: float = 0.15  # a slot is a filler slot with this probability (must be > 0: any slot may be filler)
    story_probs: tuple = (("single", 0.2), ("repeat", 0.1), ("correct", 0.25), ("confirm", 0.1),
                          ("change", 0.15), ("retract", 0.1), ("tentative", 0.1))

    def __post_init__(self):
        bad = [(k, v, hi) for k, v, hi in (("n_keys", self.n_keys, len(LEDGER_KEYS)),
                                            ("n_values", self.n_values, len(LEDGER_VALUES)),
                                            ("n_fillers", self.n_fillers, len(LEDGER_FILLERS)))
               if not (3 if k == "n_values" else 1) <= v <= hi]
        if bad:
            raise ValueError(f"LedgerConfig: {bad[0][0]}={bad[0][1]}; expected "
                             f"{3 if bad[0][0] == 'n_values' else 1}..{bad[0][2]}")
        if self.n_slots < 2 or not 0.0 < self.p_filler < 1.0:
            raise ValueError(f"LedgerConfig: need n_slots >= 2 and 0 < p_filler < 1, got {self.n_slots}, "
                             f"{self.p_filler}")
        names = [s for s, _ in self.story_probs]  # the oracle is exact for the support where every story occurs
        if sorted(names) != sorted(LEDGER_STORIES) or not all(p > 0 for _, p in self.story_probs):
            raise ValueError(f"LedgerConfig.story_probs={self.story_probs}: every story of "
                             f"{sorted(LEDGER_STORIES)} once, each with a probability > 0")

    @property
    def keys(self):
        return LEDGER_KEYS[:self.n_keys]

    @property
    def values(self):
        return LEDGER_VALUES[:self.n_values]

    def first_evidence_accuracy(self) -> float:
        """P(answer = first mentioned value): the accuracy of writing at the first evidence."""
        p = dict(self.story_probs)
        return sum(p.get(s, 0.0) for s in ("single", "repeat", "confirm", "tentative")) / sum(p.values())


@dataclasses.dataclass(frozen=True)
class VerbFinalConfig:
    min_clauses: int = 1
    max_clauses: int = 2
    adj_prob: float = 0.4
    pp_prob: float = 0.5
    n_det: int = VF_SIZES["det"]
    n_adj: int = VF_SIZES["adj"]
    n_noun: int = VF_SIZES["noun"]
    n_verb: int = VF_SIZES["verb"]
    n_prep: int = VF_SIZES["prep"]

    def __post_init__(self):
        if not 1 <= self.min_clauses <= self.max_clauses:
            raise ValueError(f"VerbFinalConfig: need 1 <= min_clauses <= max_clauses, got {self.min_clauses}, "
                             f"{self.max_clauses}")
        for c, hi in VF_SIZES.items():  # >= 2: the oracle takes every word to be unknown until read
            if not 2 <= getattr(self, f"n_{c}") <= hi:
                raise ValueError(f"VerbFinalConfig.n_{c}={getattr(self, f'n_{c}')}; expected 2..{hi}")
        if not (0 <= self.adj_prob <= 1 and 0 <= self.pp_prob <= 1):
            raise ValueError("VerbFinalConfig: adj_prob and pp_prob are probabilities")

    def words(self, cls: str, side: str = "vf_src") -> tuple:
        return lexicon()[side][cls][:getattr(self, f"n_{cls}")]


@dataclasses.dataclass(frozen=True)
class SynonymMapConfig:
    min_len: int = 3
    max_len: int = 7
    n_concepts: int = SYN_CONCEPTS
    intense_prob: float = 0.3
    max_synonyms: int = 128  # caps every set (its first max_synonyms words)

    def __post_init__(self):
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"SynonymMapConfig: need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        # 0 < intense_prob < 1: the oracle takes the word after a concept to be unknown until read
        if not 2 <= self.n_concepts <= SYN_CONCEPTS or self.max_synonyms < 1 or not 0 < self.intense_prob < 1:
            raise ValueError(f"SynonymMapConfig: n_concepts in 2..{SYN_CONCEPTS}, max_synonyms >= 1, "
                             "0 < intense_prob < 1")

    def valid_set(self, concept: str, intense: bool) -> tuple:
        lex = lexicon()
        i = lex["syn_concepts"].index(concept)
        return (lex["syn_intense"] if intense else lex["syn_base"])[i][:self.max_synonyms]


STUDY_TASKS = {"ledger": LedgerConfig, "verb-final": VerbFinalConfig, "synonym-map": SynonymMapConfig}
# task -> (metric, headline key, column, show AL/LAAL): the shape of evaluation.results.TASK_QUALITY
STUDY_QUALITY = {"ledger": ("squad", "exact_match", "acc", False), "verb-final": ("bleu", "bleu", "BLEU", True),
                 "synonym-map": ("multiref", "score", "mref", True)}


def _check(name: str) -> str:
    if name not in STUDY_TASKS:
        raise KeyError(f"unknown study task {name!r}; expected one of {sorted(STUDY_TASKS)}")
    return name


# ------------------------------------------------------------------------------------------------ ledger

def _ledger_mention(key, kind, value):
    return ["no", key, "is", value] if kind == "no" else [key, kind, value, "."]


def ledger_sample(rng: np.random.Generator, cfg: LedgerConfig) -> tuple[str, list[str], str, str]:
    """One draw: (asked key, stream words, answer, asked key's story)."""
    names, probs = zip(*cfg.story_probs)
    cdf = np.cumsum(probs) / np.sum(probs)

    def story(max_len):  # one-mention stories always have p > 0, so one fits in any room >= 1
        while True:
            s = names[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(names) - 1)]
            if 1 + (LEDGER_STORIES[s][1] is not None) <= max_len:
                return s

    def mentions(key, s):
        first, second = LEDGER_STORIES[s]
        v1 = cfg.values[int(rng.integers(cfg.n_values))]
        out = [_ledger_mention(key, first, v1)]
        if second is not None:
            others = [v for v in cfg.values if v != v1]
            v2 = v1 if second == "same" else others[int(rng.integers(len(others)))]
            out.append(_ledger_mention(key, "no" if second == "no" else "is", v2))
        return out

    asked = cfg.keys[int(rng.integers(cfg.n_keys))]
    asked_story = story(cfg.n_slots)
    per_key = {asked: mentions(asked, asked_story)}
    room = max(cfg.n_slots - int(rng.binomial(cfg.n_slots, cfg.p_filler)), len(per_key[asked])) - len(per_key[asked])
    for key in rng.permutation([k for k in cfg.keys if k != asked]):
        if room <= 0:
            break
        per_key[str(key)] = mentions(str(key), story(room))
        room -= len(per_key[str(key)])
    labels = [k for k, ms in per_key.items() for _ in ms]
    labels += [None] * (cfg.n_slots - len(labels))
    words, used = [], Counter()
    for lab in (labels[int(i)] for i in rng.permutation(len(labels))):
        if lab is None:
            words += [LEDGER_FILLERS[int(j)] for j in rng.integers(cfg.n_fillers, size=4)]
        else:
            words += per_key[lab][used[lab]]
            used[lab] += 1
    return asked, words, per_key[asked][-1][3 if per_key[asked][-1][0] == "no" else 2], asked_story


def _ledger_slots(key: str, words: Sequence[str]) -> list[tuple[int, str, str]]:
    """The key's mentions as (slot, kind, value), kind in is / maybe / no."""
    out = []
    for s in range(len(words) // 4):
        w = words[4 * s:4 * s + 4]
        if w[0] == key:
            out.append((s, w[1], w[2]))
        elif w[0] == "no" and w[1] == key:
            out.append((s, "no", w[3]))
    return out


def ledger_determined_at(key: str, words: Sequence[str]) -> tuple[str, int, int]:
    """(answer, oracle read count, first-evidence read count) of the asked key in a valid stream.

    The answer is fixed once (a) a second mention's value is read (a repeat of a statement is known from
    its first word: nothing else may follow a statement in a slot that starts with the key), or (b) with a
    single mention, every later slot's first word (and, after a ``no``, its second word) has been read: no
    later slot can still be a mention of the key. Needs >= 3 values (a correction's value is then open)."""
    ms = _ledger_slots(key, words)
    s1, k1, v1 = ms[0]
    first = 4 * s1 + 3
    if len(ms) == 2:
        s2, k2, v2 = ms[1]
        if k1 == "is" and k2 == "is":  # a repeat: known from the slot's first word
            return v2, 4 * s2 + 1, first
        return v2, 4 * s2 + (4 if k2 == "no" else 3), first
    last = len(words) // 4 - 1
    if s1 == last:
        return v1, first, first
    return v1, max(first, 4 * last + (2 if words[4 * last] == "no" else 1)), first


# -------------------------------------------------------------------------------------------- verb-final

def verb_final_sample(rng: np.random.Generator, cfg: VerbFinalConfig) -> list[str]:
    def pick(cls):
        ws = cfg.words(cls)
        return ws[int(rng.integers(len(ws)))]

    def np_():
        return [pick("det")] + ([pick("adj")] if rng.random() < cfg.adj_prob else []) + [pick("noun")]

    words: list[str] = []
    for k in range(int(rng.integers(cfg.min_clauses, cfg.max_clauses + 1))):
        words += (["and"] if k else []) + np_() + np_()
        words += ([pick("prep")] + np_() if rng.random() < cfg.pp_prob else []) + [pick("verb")]
    return words


@functools.lru_cache(maxsize=None)
def _vf_tables():
    lex = lexicon()
    cls = {w: c for c, ws in lex["vf_src"].items() for w in ws}
    tr = {w: t for c in VF_SIZES for w, t in zip(lex["vf_src"][c], lex["vf_tgt"][c])}
    tr[VF_CONJ[0]] = VF_CONJ[1]
    return cls, tr


def verb_final_target(words: Sequence[str], max_clauses: int) -> tuple[list[str], list[int]]:
    """(target words, oracle read counts of the target words and then the end-of-turn token).

    Per clause the target is ``SUBJ' VERB' OBJ' [PREP' NP']``: VERB' (the clause's second constituent) needs
    the clause's last source word; everything after it is then already read."""
    cls, tr = _vf_tables()
    M, out, need, i, n_clauses = len(words), [], [], 0, 0

    def noun_phrase(i):  # [(index, read count)] of DET' NOUN' [ADJ'], and the index after the NP
        adj = cls.get(words[i + 1]) == "adj"
        noun = i + 1 + adj
        return [(i, i + 1), (noun, noun + 1)] + ([(i + 1, noun + 1)] if adj else []), noun + 1

    while True:
        n_clauses += 1
        subj, i = noun_phrase(i)
        obj, i = noun_phrase(i)
        pp = []
        if cls.get(words[i]) == "prep":
            pp, j = noun_phrase(i + 1)
            pp, i = [(i, i + 1)] + pp, j
        for idx, n in subj + [(i, i + 1)] + obj + pp:  # the verb is at i
            out.append(tr[words[idx]])
            need.append(n)
        i += 1
        if i < M:  # "and" -> "und"
            out.append(tr[words[i]])
            need.append(i + 1)
            i += 1
            continue
        break
    need.append(M if n_clauses == max_clauses else M + 1)
    return out, np.maximum.accumulate(need).tolist()


def diagonal_read_counts(M: int, n_words: int) -> list[int]:
    """The proportional (diagonal) labels ``ceil((k+1) M / n_words)`` of target words k, then M+1: what a
    length-ratio heuristic gives when it ignores reordering."""
    return [min(M, -(-(k + 1) * M // n_words)) for k in range(n_words)] + [M + 1]


# ------------------------------------------------------------------------------------------- synonym-map

def synonym_sample(rng: np.random.Generator, cfg: SynonymMapConfig) -> tuple[list[str], list[tuple]]:
    """(source words, per target position (concept, intensified))."""
    concepts = lexicon()["syn_concepts"][:cfg.n_concepts]
    words, items = [], []
    for _ in range(int(rng.integers(cfg.min_len, cfg.max_len + 1))):
        c, intense = concepts[int(rng.integers(len(concepts)))], bool(rng.random() < cfg.intense_prob)
        words += [c] + ([SYN_INTENSIFIER] if intense else [])
        items.append((c, intense))
    return words, items


def synonym_oracle(words: Sequence[str], max_len: int) -> list[int]:
    """Per target position: the read after its concept (the intensifier or the next concept) or the end
    marker; then the end-of-turn token (M only when max_len concepts were read and the last was intensified)."""
    M = len(words)
    pos = [i for i, w in enumerate(words) if w != SYN_INTENSIFIER]
    need = [i + 2 if i + 1 < M else M + 1 for i in pos]
    need.append(M if (len(pos) == max_len and words[-1] == SYN_INTENSIFIER) else M + 1)
    return np.maximum.accumulate(need).tolist()


def parse_pattern(pattern: str) -> list[frozenset]:
    """``"a|b c"`` -> ``[{a, b}, {c}]``: a synonym-map reference's valid set per position."""
    return [frozenset(p.split("|")) for p in pattern.split()]


# ------------------------------------------------------------------------------------------- generation

def _split_of(text: str) -> str:
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 1000
    return next(s for s, (lo, hi) in _SPLIT_BOUNDS.items() if lo <= h < hi)


def _draw(name: str, rng, cfg) -> tuple[str, list[str], str, list[str], dict]:
    """(prompt, source words, target text, references, meta) of one draw."""
    if name == "ledger":
        key, words, answer, story = ledger_sample(rng, cfg)
        ans, det, first = ledger_determined_at(key, words)
        assert ans == answer
        return (PROMPTS[name].format(key=key), words, answer, [answer],
                {"key": key, "story": story, "oracle": [det, det], "external": [first, first]})
    if name == "verb-final":
        words = verb_final_sample(rng, cfg)
        target, oracle = verb_final_target(words, cfg.max_clauses)
        return (PROMPTS[name], words, " ".join(target), [" ".join(target)],
                {"oracle": oracle, "external": diagonal_read_counts(len(words), len(target)),
                 "n_clauses": words.count("and") + 1})
    words, items = synonym_sample(rng, cfg)
    sets = [cfg.valid_set(c, i) for c, i in items]
    target = " ".join(s[int(rng.integers(len(s)))] for s in sets)
    pos = [i for i, w in enumerate(words) if w != SYN_INTENSIFIER]
    return (PROMPTS[name], words, target, [" ".join("|".join(s) for s in sets)],
            {"oracle": synonym_oracle(words, cfg.max_len), "external": [i + 1 for i in pos] + [len(words) + 1],
             "set_sizes": [len(s) for s in sets]})


def make_study_task(name: str, n: int, seed: int = 0, split: str = "train", config=None) -> list[TextExample]:
    """``n`` examples of study task ``name`` for ``split``; deterministic in (name, config, seed, split); the
    splits never share a (prompt, source)."""
    _check(name)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    cfg = config if config is not None else STUDY_TASKS[name]()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split),
                                                        100 + list(STUDY_TASKS).index(name)]))
    out: list[TextExample] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"study task {name!r}: cannot draw {n} {split} examples under {cfg}")
        prompt, words, target, refs, meta = _draw(name, rng, cfg)
        if _split_of(prompt + "\n" + " ".join(words)) != split:
            continue
        out.append(TextExample(task=name, id=f"{name}/{split}/{seed}/{len(out)}", prompt_text=prompt,
                               units=split_words(" ".join(words)), target_text=target, references=refs, meta=meta))
    return out


def _per_token(counts: Sequence[int], M: int, num_target_tokens: int) -> np.ndarray:
    out = np.full(num_target_tokens, M + 1, np.int32)
    k = min(len(counts), num_target_tokens)
    out[:k] = np.asarray(counts[:k], np.int32)
    return out


def study_oracle_read_counts(text_example, num_target_tokens: int) -> np.ndarray:
    """Per target token y_1..y_L (word-level tokenizer: one token per word, then the end-of-turn token): the
    oracle read count (``meta["oracle"]``); tokens past it need the end marker (M+1). The same contract as
    ``method.probe.oracle_read_counts``."""
    _check(text_example.task)
    return _per_token(text_example.meta["oracle"], len(text_example.units), num_target_tokens)


def study_external_read_counts(text_example, num_target_tokens: int) -> np.ndarray:
    """The external annotator's read counts (``meta["external"]``): realistic noisy labels for the probe."""
    _check(text_example.task)
    return _per_token(text_example.meta["external"], len(text_example.units), num_target_tokens)


def source_blind_outputs(name: str, examples: Sequence[TextExample]) -> list[str]:
    """Candidate constant outputs (no source read) built from ``examples``' targets: each answer seen
    (ledger), and for every target length the per-position most frequent word sequence."""
    targets = [e.target_text.split() for e in examples]
    if name == "ledger":
        return sorted({" ".join(t) for t in targets})
    out = [""]
    for length in sorted({len(t) for t in targets}):
        cols = [Counter(t[k] for t in targets if len(t) > k) for k in range(length)]
        out.append(" ".join(c.most_common(1)[0][0] for c in cols))
    return out


def analytic_chance(name: str, config=None) -> float | None:
    """Exact chance quality where it has a closed form (ledger: 100 / n_values, the answer being uniform over
    the values); None otherwise (``evaluation.study_metrics.chance_level`` estimates it)."""
    cfg = config if config is not None else STUDY_TASKS[_check(name)]()
    return 100.0 / cfg.n_values if name == "ledger" else None
