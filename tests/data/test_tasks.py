"""Task adapters on fixtures in each dataset's real schema, the loaders (datasets, tfds) and bad rows."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proactive_jax.data import loaders, tasks
from proactive_jax.data.loaders import DatasetSpec, hub_parquet_spec, load_rows, load_task
from proactive_jax.data.render import render_example, template_parts
from proactive_jax.data.tasks import RowRef, adapt_rows
from proactive_jax.errors import DataError
from tests.tokenizers_util import qwen_style_tokenizer

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture(scope="module")
def tok():
    return qwen_style_tokenizer("qwen2.5")


@pytest.fixture(scope="module")
def parts(tok):
    return template_parts(tok)


@pytest.fixture
def hf_cache(tmp_path):
    return str(tmp_path / "hf_cache")


def _check_rendered(tok, parts, ex):
    se = render_example(tok, ex, parts)
    dec = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    assert "".join(dec(u) for u in se.units) == ex.source
    assert dec(se.prompt) == parts.prompt_prefix + ex.prompt_text + "\n"
    assert dec(se.target[:-1]) == ex.target_text
    return se


# ------------------------------------------------------------------------------------------- adapters

def test_iwslt_parquet_layout_both_directions(tok, parts, hf_cache):
    spec = DatasetSpec("hub", str(FIX / "iwslt2017"), data_dir="iwslt2017-en-de", split="validation")
    rows = load_rows(spec, cache_dir=hf_cache)
    assert len(rows) == 2 and set(rows[0]["translation"]) == {"en", "de"}
    exs, rep = load_task(spec, "iwslt2017", cache_dir=hf_cache)
    assert rep.kept == 2 and rep.skipped == {}
    assert exs[0].prompt_text == "Translate the following English text into German."
    assert exs[1].source == "The quick brown fox jumps over the lazy dog."
    assert exs[1].target_text == "Der schnelle braune Fuchs springt über den faulen Hund."
    assert exs[1].references == [exs[1].target_text]
    for ex in exs:
        _check_rendered(tok, parts, ex)
    back, _ = load_task(spec, "iwslt2017", src="de", tgt="en", cache_dir=hf_cache)
    assert back[0].prompt_text == "Translate the following German text into English."
    assert back[0].source == "Hallo Welt !" and back[0].target_text == "Hello world !"
    fr, _ = load_task(DatasetSpec("hub", str(FIX / "iwslt2017"), data_dir="iwslt2017-en-fr", split="validation"),
                      "iwslt2017", tgt="fr", cache_dir=hf_cache)
    assert fr[0].target_text == "Bonjour le monde !" and "French" in fr[0].prompt_text


def test_squad_keeps_every_gold_answer(tok, parts, hf_cache):
    spec = DatasetSpec("files", str(FIX / "squad_v1.1_sample.jsonl"), split="validation")
    exs, rep = load_task(spec, "squad", cache_dir=hf_cache)
    assert rep.kept == 3
    raw = [json.loads(line) for line in open(FIX / "squad_v1.1_sample.jsonl")]
    for ex, row in zip(exs, raw):
        assert ex.id == row["id"]
        assert ex.references == [a.strip() for a in row["answers"]["text"]]
        assert ex.target_text == row["answers"]["text"][0]
        assert ex.source == row["context"].strip()
        assert f"Question: {row['question']}" in ex.prompt_text
        assert ex.prompt_text.index("Question:") < len(ex.prompt_text)  # question up front, context streamed
        _check_rendered(tok, parts, ex)
    assert exs[0].references == ["1999", "in 1999", "1999"]


def test_mctest_letters_map_to_options(tok, parts, hf_cache):
    spec = hub_parquet_spec(str(FIX / "mctest"), "mc500", split="train")
    assert spec.revision == loaders.PARQUET_REVISION
    # a local copy of the parquet-conversion layout: same load_dataset call, minus the Hub revision
    local = DatasetSpec("hub", spec.path, data_dir=spec.data_dir, split=spec.split)
    rows = load_rows(local, cache_dir=hf_cache)
    exs, rep = load_task(local, "mctest", cache_dir=hf_cache)
    assert rep.kept == 2
    for ex, row in zip(exs, rows):
        letter = row["answer"]
        assert ex.target_text == letter and ex.references == [letter]
        assert ex.meta["answer_text"] == row["answer_options"][letter]
        for L in "ABCD":
            assert f"\n{L}. {row['answer_options'][L]}" in ex.prompt_text
        assert "\\newline" not in ex.source and "\n\nOne day," in ex.source
        assert f"Question: {row['question']}" in ex.prompt_text
        _check_rendered(tok, parts, ex)
    assert exs[0].meta["answer_text"] == "soup cans" and exs[1].meta["answer_text"] == "the store"
    assert exs[0].id == "mc500.train.0#0"


def test_dialogsum_csv_and_generic(tok, parts, hf_cache):
    spec = DatasetSpec("files", str(FIX / "dialogsum_sample.csv"), split="train")
    exs, _ = load_task(spec, "dialogsum", cache_dir=hf_cache)
    assert exs[0].prompt_text == "Summarize the following dialogue."
    assert exs[0].source.startswith("#Person1#: Hi, how are you?\n#Person2#:")
    assert exs[0].target_text == "#Person2# goes to the store and #Person1# asks for soup."
    assert exs[0].id == "train_0" and exs[0].meta == {"topic": "shopping"}
    for ex in exs:
        _check_rendered(tok, parts, ex)
    g = tasks.generic({"doc": {"body": "one two  three"}, "q": "why?", "out": "because", "refs": ["because", "b"]},
                      RowRef("mine", "train", 4), source_field="doc.body", target_field="out",
                      prompt_fields=["q"], instruction="Answer.", references_field="refs", task="mine")
    assert g.units == ["one", " two", "  three"] and g.prompt_text == "Answer.\nQ: why?"
    assert g.references == ["because", "b"] and g.id == "mine/train/4" and g.task == "mine"


def test_save_to_disk_loader(hf_cache, tmp_path):
    import datasets

    rows = [{"translation": {"en": "Hello world", "de": "Hallo Welt"}}]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    exs, _ = load_task(DatasetSpec("disk", str(tmp_path / "saved"), split="test"), "iwslt2017")
    assert exs[0].source == "Hello world"
    with pytest.raises(loaders.LoaderError, match="split 'train'"):
        load_rows(DatasetSpec("disk", str(tmp_path / "saved"), split="train"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert len(load_rows(DatasetSpec("disk", str(tmp_path / "single"), max_rows=5))) == 1


def test_jsonl_files_max_rows(hf_cache):
    spec = DatasetSpec("files", str(FIX / "squad_v1.1_sample.jsonl"), split="train", max_rows=2)
    assert len(load_rows(spec, cache_dir=hf_cache)) == 2
    with pytest.raises(loaders.LoaderError, match="cannot tell the format"):
        load_rows(DatasetSpec("files", str(FIX / "make_fixtures.py")))


# ------------------------------------------------------------------------------------------------- tfds

def _build_tiny_tfds_squad(data_dir: Path):
    """A tiny tfds dataset with SQuAD's feature schema, prepared as ArrayRecord without TensorFlow."""
    loaders.ensure_tfds_compat()  # tfds 4.9 imports the 'importlib_resources' backport when preparing
    import tensorflow_datasets as tfds

    class SquadFixture(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(), "title": tfds.features.Text(), "context": tfds.features.Text(),
                "question": tfds.features.Text(),
                "answers": tfds.features.Sequence({"text": tfds.features.Text(), "answer_start": np.int32}),
            }))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for row in (json.loads(line) for line in open(FIX / "squad_v1.1_sample.jsonl")):
                yield row["id"], row

    SquadFixture(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_data_source_without_tensorflow(tmp_path, tok, parts):
    assert "tensorflow" not in sys.modules  # the whole path runs without TF
    _build_tiny_tfds_squad(tmp_path / "tfds")
    files = sorted(p.name for p in (tmp_path / "tfds" / "squad_fixture" / "1.0.0").iterdir())
    assert any(".array_record-" in f for f in files) and "dataset_info.json" in files
    spec = DatasetSpec("tfds", "squad_fixture", split="validation", data_dir=str(tmp_path / "tfds"), download=False)
    rows = load_rows(spec)
    assert isinstance(rows, loaders.TfdsRows) and len(rows) == 3
    # tfds stores examples in the order of a hash of their keys, so compare by id
    by_id = {r["id"]: r for r in rows}
    assert isinstance(by_id["sq0001"]["context"], str)
    assert by_id["sq0001"]["answers"] == {"text": ["1999", "in 1999", "1999"], "answer_start": [32, 29, 32]}
    exs, rep = load_task(spec, "squad")
    raw = {r["id"]: r for r in (json.loads(line) for line in open(FIX / "squad_v1.1_sample.jsonl"))}
    assert sorted(e.id for e in exs) == sorted(raw) and rep.kept == 3
    for ex in exs:
        assert ex.references == [a.strip() for a in raw[ex.id]["answers"]["text"]]
        assert ex.source == raw[ex.id]["context"].strip()
        _check_rendered(tok, parts, ex)
    sliced = load_rows(DatasetSpec("tfds", "squad_fixture", split="validation[1:]", data_dir=str(tmp_path / "tfds"),
                                   download=False))
    assert [r["id"] for r in sliced] == [r["id"] for r in rows][1:]


# --------------------------------------------------------------------------------------------- bad rows

BAD_SQUAD_ROWS = [
    {"id": "ok", "context": "The fox ran.", "question": "Who ran?", "answers": {"text": ["The fox"], "answer_start": [0]}},
    {"id": "nocontext", "question": "Who?", "answers": {"text": ["x"], "answer_start": [0]}},
    {"id": "empty", "context": "   ", "question": "Who?", "answers": {"text": ["x"], "answer_start": [0]}},
    {"id": "noanswer", "context": "a b", "question": "Who?", "answers": {"text": [], "answer_start": []}},
    {"id": "nontext", "context": 42, "question": "Who?", "answers": {"text": ["x"], "answer_start": [0]}},
    "not a dict",
]


def test_bad_rows_raise_with_dataset_split_index():
    with pytest.raises(DataError, match=r"dataset 'sq' split 'dev' row 1: missing field 'context'"):
        adapt_rows(BAD_SQUAD_ROWS, "squad", dataset="sq", split="dev")
    with pytest.raises(DataError, match=r"row 2: field 'context' is empty"):
        tasks.squad(BAD_SQUAD_ROWS[2], RowRef("sq", "dev", 2))
    with pytest.raises(DataError, match=r"row 4: field 'context' is int, expected text"):
        tasks.squad(BAD_SQUAD_ROWS[4], RowRef("sq", "dev", 4))
    with pytest.raises(DataError, match=r"row 3: field 'answers.text' has no gold answer"):
        tasks.squad(BAD_SQUAD_ROWS[3], RowRef("sq", "dev", 3))
    bad_mc = {"question": "q", "story": "s t", "answer_options": {"A": "a", "B": "b", "C": "c", "D": "d"},
              "answer": "E"}
    with pytest.raises(DataError, match=r"mc.*row 0: answer 'E' is not one of"):
        tasks.mctest(bad_mc, RowRef("mc", "train", 0))
    with pytest.raises(DataError, match=r"missing field 'translation.de'"):
        tasks.iwslt2017({"translation": {"en": "x"}}, RowRef("iw", "train", 9))


def test_bad_rows_skipped_counted_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="proactive_jax.data.tasks"):
        exs, rep = adapt_rows(BAD_SQUAD_ROWS, "squad", dataset="sq", split="dev", on_bad_example="skip")
    assert [e.id for e in exs] == ["ok"]
    assert rep.total == 6 and rep.kept == 1 and rep.n_skipped == 5
    assert rep.skipped == {"missing field context": 1, "empty context": 1, "no answer": 1, "non-text context": 1,
                           "row not a dict": 1}
    assert "row 1" in rep.first_errors[0]
    assert "sq [dev]: 1/6 rows kept" in caplog.text and "missing field context: 1" in caplog.text
    with pytest.raises(ValueError, match="on_bad_example"):
        adapt_rows([], "squad", on_bad_example="ignore")
    with pytest.raises(DataError, match="unknown task"):
        adapt_rows([], "nope")


def test_known_datasets_use_parquet_conversion_for_script_datasets():
    spec, task, opts = loaders.known_dataset("iwslt2017-en-de", "validation")
    assert (spec.source, spec.path, spec.revision, spec.data_dir) == (
        "hub", "IWSLT/iwslt2017", "refs/convert/parquet", "iwslt2017-en-de")
    assert task == "iwslt2017" and opts == {"src": "en", "tgt": "de"}
    assert loaders.known_dataset("mctest-mc500", "test")[0].revision == loaders.PARQUET_REVISION
    assert loaders.known_dataset("squad", "validation")[0].path == "rajpurkar/squad"
    assert set(tasks.TASKS) >= {"iwslt2017", "squad", "mctest", "dialogsum", "generic"}
    with pytest.raises(loaders.LoaderError, match="unknown dataset"):
        loaders.known_dataset("wmt", "train")
    a = DatasetSpec("files", str(FIX / "squad_v1.1_sample.jsonl"))
    assert a.key() == DatasetSpec("files", str(FIX / "squad_v1.1_sample.jsonl")).key()
    assert a.key() != a.with_split("test").key()


def test_import_does_not_need_datasets_or_tfds():
    code = ("import sys; import proactive_jax, proactive_jax.data; "
            "bad = [m for m in ('datasets', 'tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
