"""Built-in synthetic streaming tasks and their word-level tokenizer.

Two tasks, small enough for a 2-layer, 64-wide decoder trained for minutes on CPU, with a known answer to
"when does the policy have enough source to write?":

``lookup`` (non-monotonic, like short QA). The prompt asks for the item of one category ("which fruit ?").
The stream holds ``n_units`` words: exactly one item of each of ``n_categories`` categories, in random
positions, the rest filler words (drawn with replacement). The target is the asked item. The answer is
determined exactly when its evidence (the one item of the asked category) has been read: before that,
every item of the category is still possible; from then on, only one (``meta["evidence_unit"]`` is its
0-based unit index, so the oracle read count is ``evidence_unit + 1``).

``word-map`` (monotonic, like MT). The source is a sentence of one or more clauses
``DET [ADJ] NOUN VERB DET [ADJ] NOUN`` joined by "and"; the target translates it word by word with a fixed
dictionary, swapping every adjective-noun pair (``the big house`` -> ``der haus gross``). Target word k
therefore needs source words up to k + ``WORD_MAP_MAX_LOOKAHEAD`` (= 1): a policy needs one word of
look-ahead, like wait-2.

Both tasks are rendered through the same ``AutoTokenizer`` + ``template_parts`` + ``render_example`` path as
Qwen, with the word-level tokenizer written by ``build_tokenizer`` (a ``tokenizers`` WordLevel model with a
whitespace pre-tokenizer, Qwen special tokens and a Qwen-style chat template without a default system turn).
A copy ships in ``proactive_jax/assets/synthetic_tokenizer``.

Generation is a pure function of (task, config, seed, split). Splits are disjoint by construction: every
candidate example is assigned to train/valid/test by a hash of its prompt and source (80/10/10), and each
split keeps only its own candidates, drawn from a stream seeded by (seed, split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from proactive_jax.data.synthetic_study import STUDY_TASKS, analytic_chance, make_study_task, study_words
from proactive_jax.data.render import TextExample, split_words

# ----------------------------------------------------------------------------------------------- words

LOOKUP_CATEGORIES = {
    "fruit": ("apple", "pear", "plum", "fig", "lime", "kiwi"),
    "animal": ("cat", "dog", "fox", "owl", "bee", "cow"),
    "color": ("red", "blue", "green", "pink", "gray", "gold"),
    "tool": ("saw", "axe", "drill", "hammer", "rake", "shovel"),
}
LOOKUP_FILLERS = ("the", "a", "and", "then", "so", "it", "is", "was", "on", "in", "at", "by", "with", "from",
                  "but", "or", "not", "very", "just", "here", "there", "now", "soon", "still")

WORD_MAP_DICT = {
    "det": {"the": "der", "a": "ein", "this": "dieses", "every": "jedes"},
    "adj": {"big": "gross", "small": "klein", "old": "alt", "new": "neu", "happy": "froh", "dark": "dunkel",
            "quick": "schnell", "quiet": "leise"},
    "noun": {"house": "haus", "tree": "baum", "car": "auto", "bird": "vogel", "river": "fluss",
             "stone": "stein", "book": "buch", "lamp": "lampe", "child": "kind", "horse": "pferd"},
    "verb": {"sees": "sieht", "likes": "mag", "finds": "findet", "takes": "nimmt", "paints": "malt",
             "follows": "folgt"},
    "conj": {"and": "und"},
}
WORD_MAP_MAX_LOOKAHEAD = 1  # target word k is a function of source words 0..k+1
WORD_MAP_PROMPT = "translate :"

SPECIAL_TOKENS = ("<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
ROLE_WORDS = ("system", "user", "assistant")
PROMPT_WORDS = ("which", "?", "translate", ":", ".")
SYNTHETIC_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "synthetic_tokenizer"
# the study tasks' tokenizer: the words above (same ids) + every study word (study_vocabulary())
STUDY_ASSET_DIR = ASSET_DIR.parent / "synthetic_tokenizer_study"

SPLITS = ("train", "valid", "test")
_SPLIT_BOUNDS = {"train": (0, 800), "valid": (800, 900), "test": (900, 1000)}  # of a hash mod 1000


# ---------------------------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class LookupConfig:
    n_units: int = 16
    n_categories: int = 4
    n_items: int = 6
    n_fillers: int = 24

    def __post_init__(self):
        if not 1 <= self.n_categories <= len(LOOKUP_CATEGORIES):
            raise ValueError(f"LookupConfig.n_categories={self.n_categories}; expected 1..{len(LOOKUP_CATEGORIES)}")
        if not 1 <= self.n_items <= 6:
            raise ValueError(f"LookupConfig.n_items={self.n_items}; expected 1..6")
        if not 1 <= self.n_fillers <= len(LOOKUP_FILLERS):
            raise ValueError(f"LookupConfig.n_fillers={self.n_fillers}; expected 1..{len(LOOKUP_FILLERS)}")
        if self.n_units < self.n_categories:
            raise ValueError(f"LookupConfig.n_units={self.n_units} < n_categories={self.n_categories}")

    @property
    def categories(self) -> tuple:
        return tuple(LOOKUP_CATEGORIES)[: self.n_categories]

    def items(self, category: str) -> tuple:
        return LOOKUP_CATEGORIES[category][: self.n_items]

    @property
    def fillers(self) -> tuple:
        return LOOKUP_FILLERS[: self.n_fillers]


@dataclasses.dataclass(frozen=True)
class WordMapConfig:
    min_clauses: int = 1
    max_clauses: int = 2
    adj_prob: float = 0.5
    # vocabulary sizes per class (the first n words of each list; small values allow exhaustive tests)
    n_det: int = 4
    n_adj: int = 8
    n_noun: int = 10
    n_verb: int = 6

    def __post_init__(self):
        if not 1 <= self.min_clauses <= self.max_clauses:
            raise ValueError(f"WordMapConfig clauses: need 1 <= min_clauses <= max_clauses, got "
                             f"{self.min_clauses}, {self.max_clauses}")
        for cls in ("det", "adj", "noun", "verb"):
            n = getattr(self, f"n_{cls}")
            if not 1 <= n <= len(WORD_MAP_DICT[cls]):
                raise ValueError(f"WordMapConfig.n_{cls}={n}; expected 1..{len(WORD_MAP_DICT[cls])}")
        if not 0.0 <= self.adj_prob <= 1.0:
            raise ValueError(f"WordMapConfig.adj_prob={self.adj_prob}; expected a probability")

    def words(self, cls: str) -> tuple:
        return tuple(WORD_MAP_DICT[cls])[: getattr(self, f"n_{cls}")]


def default_config(name: str):
    if _check_name(name) in STUDY_TASKS:
        return STUDY_TASKS[name]()
    return {"lookup": LookupConfig(), "word-map": WordMapConfig()}[name]


def _check_name(name: str) -> str:
    if name not in SYNTHETIC_TASKS:
        raise KeyError(f"unknown synthetic task {name!r}; expected one of {sorted(SYNTHETIC_TASKS)}")
    return name


# ------------------------------------------------------------------------------------------------ lookup

def lookup_sample(rng: np.random.Generator, cfg: LookupConfig) -> tuple[str, list[str], str, int]:
    """One lookup draw: (asked category, stream words, answer, evidence index)."""
    cats = cfg.categories
    asked = cats[int(rng.integers(len(cats)))]
    positions = rng.permutation(cfg.n_units)[: len(cats)]
    fillers = cfg.fillers
    words = [fillers[int(j)] for j in rng.integers(len(fillers), size=cfg.n_units)]
    answer, evidence = "", -1
    for c, pos in zip(cats, positions):
        items = cfg.items(c)
        item = items[int(rng.integers(len(items)))]
        words[int(pos)] = item
        if c == asked:
            answer, evidence = item, int(pos)
    return asked, words, answer, evidence


def lookup_prompt(category: str) -> str:
    return f"which {category} ?"


def lookup_answers_consistent(category: str, prefix: list[str], cfg: LookupConfig) -> set:
    """Answers still possible after reading ``prefix`` (brute force over the generator's support): an
    item ``a`` of ``category`` is possible iff some valid stream starting with ``prefix`` contains it."""
    out = set()
    cats = cfg.categories
    for a in cfg.items(category):
        seen = {}
        ok = len(prefix) <= cfg.n_units
        for w in prefix:
            owner = [c for c in cats if w in cfg.items(c)]
            if owner:
                c = owner[0]
                if c in seen:  # a category's item may appear only once
                    ok = False
                seen[c] = w
            elif w not in cfg.fillers:
                ok = False
        if c_seen := seen.get(category):
            ok = ok and c_seen == a
        missing = len([c for c in cats if c not in seen])
        ok = ok and (cfg.n_units - len(prefix)) >= missing
        if ok:
            out.add(a)
    return out


# ---------------------------------------------------------------------------------------------- word-map

def word_map_sample(rng: np.random.Generator, cfg: WordMapConfig) -> list[str]:
    n_clauses = int(rng.integers(cfg.min_clauses, cfg.max_clauses + 1))
    words: list[str] = []

    def pick(cls):
        ws = cfg.words(cls)
        return ws[int(rng.integers(len(ws)))]

    def np_phrase():
        out = [pick("det")]
        if rng.random() < cfg.adj_prob:
            out.append(pick("adj"))
        out.append(pick("noun"))
        return out

    for k in range(n_clauses):
        if k:
            words.append("and")
        words += np_phrase() + [pick("verb")] + np_phrase()
    return words


def word_map_translate(words: list[str]) -> list[str]:
    """Word-by-word dictionary translation, every adjective-noun pair swapped."""
    flat = {w: t for d in WORD_MAP_DICT.values() for w, t in d.items()}
    adjs, nouns = WORD_MAP_DICT["adj"], WORD_MAP_DICT["noun"]
    out = [flat[w] for w in words]
    k = 0
    while k < len(words) - 1:
        if words[k] in adjs and words[k + 1] in nouns:
            out[k], out[k + 1] = out[k + 1], out[k]
            k += 2
        else:
            k += 1
    return out


def enumerate_word_map_sources(cfg: WordMapConfig) -> Iterator[list[str]]:
    """Every source sentence the generator can produce under ``cfg`` (for exhaustive tests; keep it small)."""
    nps = [[d, n] for d in cfg.words("det") for n in cfg.words("noun")]
    if cfg.adj_prob > 0:
        nps += [[d, a, n] for d in cfg.words("det") for a in cfg.words("adj") for n in cfg.words("noun")]
    clauses = [a + [v] + b for a in nps for v in cfg.words("verb") for b in nps]
    for n in range(cfg.min_clauses, cfg.max_clauses + 1):
        for combo in itertools.product(clauses, repeat=n):
            out: list[str] = []
            for k, c in enumerate(combo):
                out += (["and"] if k else []) + c
            yield out


# ------------------------------------------------------------------------------------------- generation

def _split_of(text: str) -> str:
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 1000
    for split, (lo, hi) in _SPLIT_BOUNDS.items():
        if lo <= h < hi:
            return split
    raise AssertionError(h)


def _units(words: list[str]) -> list[str]:
    return split_words(" ".join(words))


def make_task(name: str, n: int, seed: int = 0, split: str = "train", config=None) -> list[TextExample]:
    """``n`` examples of synthetic task ``name`` (``SYNTHETIC_TASKS``: lookup, word-map and the study tasks
    ledger, verb-final, synonym-map) for ``split`` (train/valid/test).

    Deterministic in (name, config, seed, split); the splits never share a (prompt, source)."""
    _check_name(name)
    if name in STUDY_TASKS:
        return make_study_task(name, n, seed, split, config)
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    cfg = config if config is not None else default_config(name)
    task_code = list(SYNTHETIC_TASKS).index(name)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), task_code]))
    out: list[TextExample] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"synthetic task {name!r}: cannot draw {n} distinct {split} examples under {cfg}")
        if name == "lookup":
            cat, words, answer, evidence = lookup_sample(rng, cfg)
            prompt = lookup_prompt(cat)
            target, meta = answer, {"category": cat, "evidence_unit": evidence}
        else:
            words = word_map_sample(rng, cfg)
            prompt = WORD_MAP_PROMPT
            target, meta = " ".join(word_map_translate(words)), {"max_lookahead": WORD_MAP_MAX_LOOKAHEAD}
        source = " ".join(words)
        if _split_of(prompt + "\n" + source) != split:
            continue
        out.append(TextExample(task=name, id=f"{name}/{split}/{seed}/{len(out)}", prompt_text=prompt,
                               units=_units(words), target_text=target, references=[target], meta=meta))
    return out


# lookup and word-map first: their seeding index (position here) stays 0 and 1
SYNTHETIC_TASKS = {"lookup": LookupConfig, "word-map": WordMapConfig, **STUDY_TASKS}


# ---------------------------------------------------------------------------------------------- tokenizer

def vocabulary() -> list[str]:
    """The word-level vocabulary, in id order (specials first)."""
    words: list[str] = list(SPECIAL_TOKENS) + list(ROLE_WORDS) + list(PROMPT_WORDS)
    words += list(LOOKUP_CATEGORIES)
    for items in LOOKUP_CATEGORIES.values():
        words += list(items)
    words += list(LOOKUP_FILLERS)
    for d in WORD_MAP_DICT.values():
        words += list(d) + list(d.values())
    seen, out = set(), []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def study_vocabulary() -> list[str]:
    """The study tokenizer's words in id order: :func:`vocabulary` (same ids, so lookup and word-map render
    identically with it) followed by every study word not already in it (4,215 words in all)."""
    base = vocabulary()
    have = set(base)
    return base + [w for w in study_words() if w not in have]


def uses_study_words(tasks) -> bool:
    """True when any of ``tasks`` is a study task (it needs the study tokenizer)."""
    return any(t in STUDY_TASKS for t in tasks)


def tokenizer_dir(tasks) -> Path:
    """The shipped tokenizer for ``tasks``: the study one when any is a study task, else the small one."""
    return STUDY_ASSET_DIR if uses_study_words(tasks) else ASSET_DIR


def build_tokenizer(out_dir, words=None) -> Path:
    """Write the synthetic word-level tokenizer (Hugging Face format) over ``words`` (default
    :func:`vocabulary`; :func:`study_vocabulary` for the study tasks) to ``out_dir``; load it with
    ``AutoTokenizer.from_pretrained(out_dir)``."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(words or vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = SYNTHETIC_CHAT_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    # portable tokenizer_config.json: the class name and special-token key that transformers 4.x and 5.x
    # both read (5.x writes "TokenizersBackend" / "extra_special_tokens", which 4.x does not know)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


def load_tokenizer(path=None):
    """The synthetic tokenizer (default: the shipped copy in the package assets), read with ``tokenizers`` alone
    (:mod:`.tokenizer_json`; the same ids as ``AutoTokenizer``, which is used where that reader declines)."""
    from proactive_jax.data.tokenizer_json import load_json_tokenizer

    tok = load_json_tokenizer(path or ASSET_DIR)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or ASSET_DIR))


def chance_quality(task: str, config: LookupConfig | None = None) -> float | None:
    """The quality (percent) a model reaches by guessing, where the task defines one in closed form: ``lookup``
    answers one of the asked category's ``n_items`` items (1/n_items), ``ledger`` one of its values; None
    otherwise (word-map's BLEU; verb-final and synonym-map: ``evaluation.study_metrics.chance_level``
    estimates the best source-blind output)."""
    if task in STUDY_TASKS:
        return analytic_chance(task, config)
    if task == "lookup":
        return 100.0 / (config or LookupConfig()).n_items
    return None
