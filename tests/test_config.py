"""Oracle: transformers' LEDConfig (its code defaults, and what it reads back from our config.json)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import transformers

from led_flax import ConfigError, LEDConfig
from led_flax.model.config import RUNTIME_FIELDS

# A config.json as real checkpoints carry it: 4.x keys, old generation fields, labels.
REAL_WORLD = {
    "_name_or_path": "./led-large-16384-arxiv", "activation_dropout": 0.0, "activation_function": "gelu",
    "architectures": ["LEDForConditionalGeneration"], "attention_dropout": 0.0,
    "attention_window": [1024] * 12, "bos_token_id": 0, "classif_dropout": 0.0, "classifier_dropout": 0.0,
    "d_model": 1024, "decoder_attention_heads": 16, "decoder_ffn_dim": 4096, "decoder_layerdrop": 0.0,
    "decoder_layers": 12, "decoder_start_token_id": 2, "dropout": 0.1, "early_stopping": True,
    "encoder_attention_heads": 16, "encoder_ffn_dim": 4096, "encoder_layerdrop": 0.0, "encoder_layers": 12,
    "eos_token_id": 2, "gradient_checkpointing": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"},
    "init_std": 0.02, "is_encoder_decoder": True, "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
    "length_penalty": 2.0, "max_decoder_position_embeddings": 1024, "max_encoder_position_embeddings": 16384,
    "max_length": 512, "min_length": 100, "model_type": "led", "no_repeat_ngram_size": 3, "num_beams": 4,
    "num_hidden_layers": 12, "pad_token_id": 1, "torch_dtype": "float32", "transformers_version": "4.2.0.dev0",
    "use_cache": False, "vocab_size": 50265,
}


def test_defaults_follow_the_reference_code():
    ours = LEDConfig().to_hf()
    ref = transformers.LEDConfig().to_dict()
    for f in dataclasses.fields(LEDConfig):
        if f.name in ("extra", "architectures", "id2label", "num_labels", "problem_type", *RUNTIME_FIELDS):
            continue
        expected = ref[f.name]
        if f.name == "attention_window":
            assert LEDConfig().attention_window == (expected,) * ref["encoder_layers"]
        else:
            assert ours[f.name] == expected, f.name
    assert LEDConfig().max_decoder_position_embeddings == 1024  # the code's default, not the docs'
    assert LEDConfig().num_labels == transformers.LEDConfig().num_labels


def test_round_trip_keeps_every_key():
    cfg = LEDConfig.from_hf(REAL_WORLD)
    out = cfg.to_hf()
    for key, value in REAL_WORLD.items():
        if key == "num_hidden_layers":  # an alias of encoder_layers
            assert out["encoder_layers"] == value
            continue
        expected = 1024 if key == "attention_window" else value
        assert out[key] == expected, key
    assert cfg.num_labels == 3 and cfg.head == "conditional_generation"
    assert json.loads(dict(cfg.extra)["num_beams"]) == 4
    # transformers reads our output back to the same config
    ref = transformers.LEDConfig.from_dict(out).to_dict()
    orig = transformers.LEDConfig.from_dict(REAL_WORLD).to_dict()
    for key in orig:
        if key not in ("attention_window", "transformers_version"):
            assert ref[key] == orig[key], key
    assert LEDConfig.from_hf(out) == cfg


def test_config_is_hashable_with_a_tuple_window():
    cfg = LEDConfig(encoder_layers=3, attention_window=[4, 6, 8])
    assert cfg.attention_window == (4, 6, 8)
    assert hash(cfg) == hash(LEDConfig(encoder_layers=3, attention_window=(4, 6, 8)))
    assert LEDConfig(encoder_layers=2, attention_window=16).attention_window == (16, 16)


@pytest.mark.parametrize("change,field", [
    (dict(attention_window=7), "attention_window"),
    (dict(attention_window=[4, 6]), "attention_window"),
    (dict(attention_window=0), "attention_window"),
    (dict(d_model=100, encoder_attention_heads=16), "encoder_attention_heads"),
    (dict(d_model=96, encoder_attention_heads=12, decoder_attention_heads=9), "decoder_attention_heads"),
    (dict(activation_function="swish"), "activation_function"),
    (dict(dropout=1.5), "dropout"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(pad_token_id=60000), "pad_token_id"),
    (dict(architectures=["BartForConditionalGeneration"]), "architectures"),
])
def test_invalid_values_name_the_field(change, field):
    with pytest.raises(ConfigError, match=f"LEDConfig.{field}"):
        LEDConfig(**change)


def test_bad_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LEDConfig.from_hf(tmp_path)
    with pytest.raises(ConfigError, match="not 'led'"):
        LEDConfig.from_hf({"model_type": "bart"})
    with pytest.raises(FileNotFoundError, match="no LED config"):
        LEDConfig.from_hf(tmp_path / "missing")
