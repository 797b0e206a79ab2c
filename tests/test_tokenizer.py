"""Oracle: transformers' LEDTokenizer on the same files: the same ids, the same decoded text."""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformers

from led_flax.tokenizer import LEDTokenizer, TokenizerError

from conftest import aclsum_texts, make_tokenizer

ODD = ["  leading spaces and\ttabs\n\n\nand blank lines  ", "unicodé — “quotes”, 漢字, emoji 🙂, ligature ﬁ",
       "", "x", "</s> a literal special token <mask> inside text", "\u00a0non-breaking\u2009thin space\u200bzero-width"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    ref = make_tokenizer(d)
    return ref, LEDTokenizer.from_pretrained(d), d


def test_ids_and_text_match_on_papers_and_odd_input(tokenizers):
    ref, ours, _ = tokenizers
    texts = aclsum_texts(30)[20:] + ODD  # papers the BPE was not trained on
    for text in texts:
        ids = ref(text)["input_ids"]
        assert ours.encode(text) == ids, text[:80]
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text[:80]
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)


def test_both_file_layouts_give_the_same_tokenizer(tokenizers):
    ref, ours, d = tokenizers
    assert not os.path.exists(d / "vocab.json")  # transformers saved tokenizer.json alone
    raw = LEDTokenizer.from_pretrained(d / "raw")  # vocab.json + merges.txt
    ref_raw = transformers.LEDTokenizer.from_pretrained(d / "raw")
    for text in aclsum_texts(22)[20:] + ODD:
        assert raw.encode(text) == ours.encode(text) == ref_raw(text)["input_ids"]


@pytest.mark.parametrize("max_length,multiple", [(64, None), (96, 16), (None, 8)])
def test_batch_encoding_matches(tokenizers, max_length, multiple):
    ref, ours, _ = tokenizers
    texts = [t[:3000] for t in aclsum_texts(4)] + ODD[:2]
    kw = dict(truncation=True, padding=True, pad_to_multiple_of=multiple)
    if max_length:
        kw["max_length"] = max_length
    expected = ref(texts, return_tensors="np", **kw)
    got = ours(texts, max_length=max_length, pad_to_multiple_of=multiple)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])
    assert np.all(got["global_attention_mask"][:, 0] == 1) and got["global_attention_mask"][:, 1:].sum() == 0
    if multiple:
        assert got["input_ids"].shape[1] % multiple == 0
    with pytest.raises(ValueError, match="multiple"):
        ours(texts, max_length=100, pad_to_multiple_of=16)


def test_question_spans_get_global_attention(tokenizers):
    _, ours, _ = tokenizers
    enc = ours(["what is attention? Attention is ...", "why?"], global_attention=[[(1, 5)], [(1, 3), (8, 12)]])
    g = enc["global_attention_mask"]
    assert g[0, 1:5].all() and g[0].sum() == 4
    assert g[1].sum() == enc["attention_mask"][1, 1:3].sum()  # spans past the text's end stay local


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="vocab.json and merges.txt, or tokenizer.json"):
        LEDTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        LEDTokenizer.from_pretrained(tmp_path)
