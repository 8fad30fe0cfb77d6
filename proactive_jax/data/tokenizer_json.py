"""A tokenizer directory read with the ``tokenizers`` library alone (no ``transformers``, so no torch import).

``load_json_tokenizer(dir)`` returns a :class:`JsonTokenizer` for a directory whose ``tokenizer.json`` is
exactly what ``transformers.AutoTokenizer`` would run (checked from ``tokenizer_config.json``: a plain fast
tokenizer class, or Qwen2's, whose pipeline ``transformers`` rebuilds and which must then equal the file's), or
None when only ``transformers`` can load it faithfully (other classes, special tokens missing from the file,
a post-processor or ``add_bos_token`` that adds ids, ...). :class:`JsonTokenizer` has the part of the
``transformers`` tokenizer interface this package uses, with the same ids, tokens, decoding and chat-template
rendering (``tests/data/test_tokenizer_json.py`` compares them token for token).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SPECIAL_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# classes whose from_pretrained runs tokenizer.json as it is
PLAIN_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")
# classes that transformers rebuilds from the vocabulary and merges with a fixed pipeline (accepted when the
# file's pipeline is that one); their default special tokens
QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")
QWEN2_DEFAULTS = {"unk_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "bos_token": None}
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _qwen2_pipeline_matches(spec: dict, add_prefix_space) -> bool:
    """Whether the file's normalizer, pre-tokenizer, decoder and BPE options are the ones transformers builds
    for Qwen2Tokenizer."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or []
    if (model.get("type") != "BPE" or model.get("dropout") is not None or model.get("fuse_unk")
            or model.get("byte_fallback") or model.get("unk_token") is not None
            or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix")):
        return False
    if (spec.get("normalizer") or {}).get("type") != "NFC" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return False
    if pre.get("type") != "Sequence" or len(steps) != 2:
        return False
    split, byte = steps
    return (split.get("type") == "Split" and (split.get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and split.get("behavior") == "Isolated" and not split.get("invert")
            and byte.get("type") == "ByteLevel" and not byte.get("use_regex")
            and bool(byte.get("add_prefix_space")) == bool(add_prefix_space))


def load_json_tokenizer(path: str | Path) -> "JsonTokenizer | None":
    """The directory's tokenizer through ``tokenizers`` alone, or None where ``transformers`` is needed."""
    d = Path(path)
    if not (d / "tokenizer.json").is_file():
        return None
    try:
        cfg = json.loads((d / "tokenizer_config.json").read_text()) if (d / "tokenizer_config.json").is_file() else {}
        spec = json.loads((d / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None  # transformers reports the broken file
    cls = cfg.get("tokenizer_class") or "PreTrainedTokenizerFast"
    if cls in QWEN2_CLASSES:
        if not _qwen2_pipeline_matches(spec, cfg.get("add_prefix_space")):
            return None
        defaults = QWEN2_DEFAULTS
    elif cls in PLAIN_CLASSES:
        defaults = {}
    else:
        return None
    if cfg.get("add_bos_token") or cfg.get("add_eos_token") or cfg.get("split_special_tokens") or \
            cfg.get("auto_map") or isinstance(cfg.get("extra_special_tokens"), dict):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(json.dumps(spec))
    post = backend.post_processor
    if post is not None and post.num_special_tokens_to_add(False):
        return None
    if spec.get("truncation") is not None or spec.get("padding") is not None:
        return None
    specials = {a: _content(cfg[a]) if a in cfg else defaults.get(a) for a in SPECIAL_ATTRIBUTES}
    extra = [_content(t) for t in (cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or [])]
    added = {t["content"] for t in spec.get("added_tokens") or []}
    declared = [t for t in list(specials.values()) + extra if t is not None]
    declared += [_content(t) for t in (cfg.get("added_tokens_decoder") or {}).values()]
    if any(t not in added for t in declared):
        return None  # transformers would add tokens (new ids): leave that to it
    template = _chat_template(d, cfg)
    texts = template.values() if isinstance(template, dict) else [template or ""]
    if any(re.search(r"\{%-?\s*generation\s*-?%\}", t) for t in texts):
        return None  # the assistant-mask extension of transformers
    return JsonTokenizer(backend, specials, extra, template, bool(cfg.get("clean_up_tokenization_spaces")))


def _chat_template(d: Path, cfg: dict):
    """``chat_template.jinja`` when present (it takes priority), else the config's entry (a string or named ones)."""
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    if (d / "chat_template.json").is_file():
        return json.loads((d / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # [{"name": ..., "template": ...}, ...]
        tpl = {t["name"]: t["template"] for t in tpl}
    return tpl


class JsonTokenizer:
    """The ``transformers`` tokenizer interface this package uses, over a ``tokenizers.Tokenizer``."""

    def __init__(self, backend, specials: dict, extra: list, chat_template, clean_up_spaces: bool = False):
        self.backend_tokenizer = backend
        self._specials = {k: v for k, v in specials.items() if v is not None}
        self._extra = [t for t in extra if t is not None]
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_spaces
        for attr in SPECIAL_ATTRIBUTES:
            setattr(self, attr, specials.get(attr))
            setattr(self, attr + "_id", None if specials.get(attr) is None else self._to_id(specials[attr]))

    # --- vocabulary -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        dec = self.backend_tokenizer.get_added_tokens_decoder()
        return {tok.content: i for i, tok in sorted(dec.items())}

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {a: self._specials[a] for a in SPECIAL_ATTRIBUTES if a in self._specials}

    @property
    def all_special_tokens(self) -> list[str]:
        out: list[str] = []
        for t in [self._specials[a] for a in SPECIAL_ATTRIBUTES if a in self._specials] + self._extra:
            if t not in out:
                out.append(t)
        return out

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def _to_id(self, token: str):
        i = self.backend_tokenizer.token_to_id(token)
        return getattr(self, "unk_token_id", None) if i is None else i

    def convert_tokens_to_ids(self, tokens):
        return self._to_id(tokens) if isinstance(tokens, str) else [self._to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    # --- text <-> ids -----------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text, add_special_tokens: bool = True) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        encs = self.backend_tokenizer.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encs]}

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self.backend_tokenizer.decode([int(i) for i in token_ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and type(self.backend_tokenizer.model).__name__ != "BPE":
            text = clean_up_tokenization(text)
        return text

    # --- chat template --------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, tokenize: bool = True, add_generation_prompt: bool = False,
                            chat_template: str | None = None, **kwargs):
        template = self._template(chat_template)
        messages = [{k: v for k, v in m.items() if v is not None} for m in conversation]
        text = _compiled(template).render(messages=messages, tools=None, documents=None,
                                          add_generation_prompt=add_generation_prompt,
                                          **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _template(self, chat_template: str | None) -> str:
        own = self.chat_template
        if isinstance(own, dict):
            if chat_template is not None and chat_template in own:
                return own[chat_template]
            if chat_template is None:
                if "default" not in own:
                    raise ValueError(f"the tokenizer has several chat templates and no default: {sorted(own)}")
                return own["default"]
        if chat_template is not None:
            return chat_template
        if own is None:
            raise ValueError("the tokenizer has no chat template")
        return own


def clean_up_tokenization(text: str) -> str:
    """``transformers``' clean-up of spaces before punctuation and contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


_TEMPLATES: dict[str, object] = {}


def _compiled(template: str):
    """The template compiled as ``transformers`` compiles chat templates (sandboxed, trim_blocks, lstrip_blocks,
    loop controls, its ``tojson``, ``raise_exception`` and ``strftime_now``)."""
    if template not in _TEMPLATES:
        from datetime import datetime

        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        _TEMPLATES[template] = env.from_string(template)
    return _TEMPLATES[template]
