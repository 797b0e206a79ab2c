"""Oracle: transformers' LEDTokenizer on the same files: the same ids, the same decoded text."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import transformers

from led_flax.io.tokenizer import LEDTokenizer, TokenizerError

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


# ------------------------------------------------------------------------------------------ bad files
def _raw_copy(tokenizers, tmp_path):
    """vocab.json + merges.txt (+ tokenizer_config.json) of the test tokenizer, to spoil."""
    _, _, d = tokenizers
    out = tmp_path / "tok"
    out.mkdir()
    for f in ("vocab.json", "merges.txt"):
        (out / f).write_bytes((d / "raw" / f).read_bytes())
    return out


@pytest.mark.parametrize("missing", ["<s>", "</s>", "<pad>"])
def test_a_vocabulary_without_leds_special_tokens_is_refused(tokenizers, tmp_path, missing):
    """The check could never fire: the special tokens were added to the vocabulary before it looked,
    with new ids (bos 1018 against the config's 0), and every summary was garbage."""
    d = _raw_copy(tokenizers, tmp_path)
    vocab = json.loads((d / "vocab.json").read_text())
    del vocab[missing]
    (d / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerError, match=rf"vocab.json and .*merges.txt: the vocabulary lacks the special tokens "
                                             rf"\['{missing}'\]; these are not the tokenizer files of an LED model"):
        LEDTokenizer.from_pretrained(d)
    # tokenizer.json alone: the same check
    _, _, src = tokenizers
    data = json.loads((src / "tokenizer.json").read_text())
    del data["model"]["vocab"][missing]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=rf"tokenizer.json: the vocabulary lacks the special tokens \['{missing}'\]"):
        LEDTokenizer.from_pretrained(tmp_path / "json")


@pytest.mark.parametrize("file, content, fragment", [
    ("vocab.json", b'["<s>", "<pad>"]', "vocab.json holds a JSON list, not an dict"),
    ("vocab.json", b'{"<s>": "zero"}', "token '<s>' has id 'zero', not a non-negative integer"),
    ("vocab.json", b'{"<s>": 0,\n "<pad>": 1,,}', "vocab.json line 2 is not valid JSON"),
    ("vocab.json", b'{"caf\xe9": 0}', "vocab.json line 1 is not UTF-8"),
    ("merges.txt", b"#version: 0.2\n\xc4\xa0 t\na b c\n", "merges.txt line 3 is 'a b c', not two tokens separated by one space"),
    ("merges.txt", b"#version: 0.2\n\xc4\xa0 t\n\xe9 x\n", "merges.txt line 3 is not UTF-8"),
    ("merges.txt", b"#version: 0.2\nzzzq yyyq\n", "merges.txt: Error while initializing BPE"),
    ("tokenizer_config.json", b'{"model_max_length": "big"}', "model_max_length is 'big', not a positive number"),
    ("tokenizer_config.json", b'{"bos_token": 5}', "a special token is 5, not a string"),
    ("special_tokens_map.json", b'{"pad_token": ["<pad>"]}', "a special token is ['<pad>'], not a string"),
    ("tokenizer_config.json", b'{"added_tokens_decoder": [1, 2]}', "the added tokens are not a list of records"),
])
def test_malformed_tokenizer_files_name_the_file_and_the_fix(tokenizers, tmp_path, file, content, fragment):
    d = _raw_copy(tokenizers, tmp_path)
    (d / file).write_bytes(content)
    with pytest.raises(TokenizerError) as e:
        LEDTokenizer.from_pretrained(d)
    assert fragment in str(e.value) and str(d) in str(e.value)
    assert str(e.value).endswith("copy the tokenizer files again from the checkpoint the model was made from")


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.pop("model"), "holds a None model, not the byte-level BPE LED needs"),
    (lambda t: t["model"].update(type="WordPiece"), "holds a WordPiece model"),
    (lambda t: t["model"].update(vocab=[1, 2]), "the vocabulary is a list, not a mapping from token to id"),
    (lambda t: t["model"].update(merges={"a": "b"}), "model.merges is a dict, not a list"),
    (lambda t: t["model"]["merges"].insert(0, 17), "merge 0 is 17, not two tokens"),
    (lambda t: t["model"]["merges"].insert(0, ["a", "b", "c"]), "merge 0 is ['a', 'b', 'c'], not two tokens"),
    (lambda t: t.update(added_tokens={"a": 1}), "the added tokens are not a list of records"),
])
def test_a_malformed_tokenizer_json_names_what_is_wrong(tokenizers, tmp_path, change, fragment):
    _, _, src = tokenizers
    data = json.loads((src / "tokenizer.json").read_text())
    change(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=re.escape(fragment)):
        LEDTokenizer.from_pretrained(tmp_path)


def test_special_ids_that_differ_from_the_models_config_are_refused(tokenizers, tmp_path, capsys):
    """A tokenizer of another model (here <s> and </s> swapped) would feed the model ids its config
    does not mean: loading the checkpoint refuses it."""
    import shutil

    import torch

    from led_flax import convert
    from led_flax.io.checkpoint import CheckpointError
    from led_flax.cli import main
    from conftest import hf_config, randomize
    ref, _, src = tokenizers
    d = tmp_path / "model"
    config = hf_config(vocab_size=len(ref), pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    randomize(transformers.LEDForConditionalGeneration(config), 0).save_pretrained(d)
    vocab = json.loads((src / "raw" / "vocab.json").read_text())
    vocab["<s>"], vocab["</s>"] = vocab["</s>"], vocab["<s>"]
    (d / "vocab.json").write_text(json.dumps(vocab))
    shutil.copy(src / "raw" / "merges.txt", d / "merges.txt")
    with pytest.raises(CheckpointError, match=r"the tokenizer's special token ids differ from config.json's: "
                                              r"bos <s>=2 \(config.json: 0\), eos </s>=0 \(config.json: 2\); the "
                                              r"tokenizer files belong to another model"):
        convert.load(d)
    (tmp_path / "doc.txt").write_text("a document")
    capsys.readouterr()
    assert main(["summarize", "--model", str(d), str(tmp_path / "doc.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "special token ids differ" in err and "Traceback" not in err and len(err.splitlines()) == 1
