"""Oracle: the README itself. Every Python block runs as written, in order, in one namespace, in a
scratch folder; the only change is a tiny random checkpoint (with its tokenizer) in place of the
`path/to/...` directories and the hub ids."""

from __future__ import annotations

import os
import re

import pytest
import torch
import transformers

from conftest import hf_config, make_tokenizer, randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# the placeholders a reader replaces: a local directory, or a hub id such as "allenai/led-base-16384"
PLACEHOLDER = re.compile(r"\"(path/to/[^\"]+|allenai/[^\"]+)\"")


def _blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return BLOCK.findall(f.read())


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random LED with the released checkpoints' vocabulary size (the README's ids go up to 31414)
    and tiny layers, saved by transformers with a BPE tokenizer and a generation_config.json."""
    d = tmp_path_factory.mktemp("readme-led")
    tok = make_tokenizer(d, vocab_size=400)
    config = hf_config(vocab_size=50265, d_model=16, encoder_layers=1, decoder_layers=1, attention_window=[32],
                       max_encoder_position_embeddings=1024, max_decoder_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    randomize(transformers.LEDForConditionalGeneration(config), 0, std=0.2).save_pretrained(d)
    return str(d)


def test_the_readme_says_which_snippets_this_test_runs():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert "`tests/test_readme.py` runs every one of them" in text
    assert len(_blocks()) >= 3


def test_every_python_block_runs_as_written(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # JAX's compilation cache in the scratch folder, not the user's ~/.cache
    from led_flax.summarization import batch as summarization
    enable = summarization.enable_compilation_cache
    monkeypatch.setattr(summarization, "enable_compilation_cache",
                        lambda path=None: enable(str(tmp_path / "jax-cache") if path else None))
    namespace: dict = {"__name__": "readme"}
    for k, block in enumerate(_blocks(), 1):
        code = PLACEHOLDER.sub(lambda m: repr(tiny_hf), block)
        exec(compile(code, f"README.md python block {k}", "exec"), namespace)
    # what the blocks promise they made
    assert os.path.isfile("out/hf/model.safetensors") and os.path.isfile("out/ours/led_flax.json")
    assert os.path.isfile("out/ours/tokenizer.json")  # saved with its tokenizer: summarize reads it
    assert os.path.isfile("out/hf2/config.json") and os.path.isfile("summaries.jsonl")
    assert len(namespace["summaries"]) == len(namespace["texts"]) == 2
    assert namespace["report"].documents == 2 and namespace["report"].generation is not None
