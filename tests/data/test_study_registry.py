"""The study tasks registered beside lookup and word-map: make_task, default configs, the shipped study
tokenizer (>= 2,000 words, the small vocabulary's ids kept), chance levels, oracle and external labels."""
import numpy as np
import pytest

from proactive_jax.data import synthetic as syn
from proactive_jax.data import synthetic_study as S
from proactive_jax.data.render import render_example, template_parts
from proactive_jax.method import probe as P

TASKS = list(S.STUDY_TASKS)


def test_registry_order_and_dispatch():
    assert list(syn.SYNTHETIC_TASKS)[:2] == ["lookup", "word-map"]  # their seeding index stays 0 and 1
    assert set(TASKS) <= set(syn.SYNTHETIC_TASKS)
    for name in TASKS:
        assert syn.default_config(name) == S.STUDY_TASKS[name]()
        a = syn.make_task(name, 5, seed=3, split="valid")
        assert [e.to_dict() for e in a] == [e.to_dict() for e in S.make_study_task(name, 5, seed=3, split="valid")]
    with pytest.raises(KeyError, match="unknown synthetic task"):
        syn.make_task("ledgers", 1)


def test_shipped_study_tokenizer_is_the_built_one(tmp_path):
    words = syn.study_vocabulary()
    assert len(words) >= 2000 and words[:len(syn.vocabulary())] == syn.vocabulary()
    shipped = syn.load_tokenizer(syn.tokenizer_dir(["lookup", "ledger"])).get_vocab()
    built = syn.load_tokenizer(syn.build_tokenizer(tmp_path / "tok", words)).get_vocab()
    assert shipped == built == {w: i for i, w in enumerate(words)}
    assert syn.tokenizer_dir(["lookup", "word-map"]) == syn.ASSET_DIR
    tok = syn.load_tokenizer(syn.STUDY_ASSET_DIR)
    parts, unk = template_parts(tok), tok.convert_tokens_to_ids("<unk>")
    for name in TASKS + ["lookup", "word-map"]:
        for e in syn.make_task(name, 8, seed=0, split="test"):
            ex = render_example(tok, e, parts)
            assert unk not in ex.prompt and unk not in ex.target and all(unk not in u for u in ex.units)


def test_chance_levels():
    assert syn.chance_quality("ledger") == pytest.approx(100 / S.LedgerConfig().n_values)
    assert syn.chance_quality("verb-final") is None and syn.chance_quality("lookup") == pytest.approx(100 / 6)


@pytest.mark.parametrize("name", TASKS)
def test_oracle_and_external_labels_through_the_probe(name):
    e = syn.make_task(name, 1, seed=0, split="train")[0]
    L = len(e.target_text.split()) + 1
    np.testing.assert_array_equal(P.oracle_read_counts(e, L), S.study_oracle_read_counts(e, L))
    np.testing.assert_array_equal(P.external_read_counts(e, L), S.study_external_read_counts(e, L))
    with pytest.raises(P.ProbeError, match="external labels"):
        P.external_read_counts(syn.make_task("lookup", 1)[0], 2)
