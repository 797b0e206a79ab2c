"""GenerationConfig: reading a checkpoint's generation settings (generation_config.json, or the old
fields of config.json), validating them, warning about the ones led-flax does not implement, and
refusing group beam search; without a model where possible."""

from __future__ import annotations

import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from led_flax import convert
from conftest import hf_config, make_reference
from led_flax import LEDConfig, model_for
from led_flax.model.config import ConfigError
from led_flax.decoding.generation import GenerationConfig, GenerationSettingWarning, generate

NEW_SETTINGS = {"encoder_no_repeat_ngram_size": 3, "encoder_repetition_penalty": 1.2, "bad_words_ids": [[5], [6, 7]],
                "suppress_tokens": [8, 9], "begin_suppress_tokens": [10],
                "exponential_decay_length_penalty": [15, 1.05], "renormalize_logits": True, "typical_p": 0.9,
                "epsilon_cutoff": 3e-4, "eta_cutoff": 2e-3}


def _config(**extra) -> LEDConfig:
    return LEDConfig.from_hf({**hf_config().to_dict(), **extra})


def _read(settings, model_config=None):
    """GenerationConfig.from_hf(settings) and the GenerationSettingWarning messages it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = GenerationConfig.from_hf(settings, model_config)
    return g, [str(w.message) for w in caught if issubclass(w.category, GenerationSettingWarning)]


def test_new_settings_are_read_from_generation_config_json(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(NEW_SETTINGS))
    g, warned = _read(tmp_path)
    assert not warned
    assert g.bad_words_ids == ((5,), (6, 7)) and g.suppress_tokens == (8, 9) and g.begin_suppress_tokens == (10,)
    assert g.exponential_decay_length_penalty == (15, 1.05)
    assert (g.encoder_no_repeat_ngram_size, g.encoder_repetition_penalty, g.renormalize_logits, g.typical_p,
            g.epsilon_cutoff, g.eta_cutoff) == (3, 1.2, True, 0.9, 3e-4, 2e-3)
    hash(g)  # it keys the compiled programs
    assert g == GenerationConfig(**{k: tuple(map(tuple, v)) if k == "bad_words_ids" else v
                                    for k, v in NEW_SETTINGS.items()})


def test_old_config_json_fields_are_read_and_defaults_stay_silent():
    # transformers 4 wrote every generation default into config.json; only the settings in use count
    old = {"encoder_no_repeat_ngram_size": 2, "num_beams": 4, "bad_words_ids": None, "num_beam_groups": 1,
           "diversity_penalty": 0.0, "remove_invalid_values": False, "output_scores": False, "typical_p": 1.0,
           "return_dict_in_generate": False, "chunk_size_feed_forward": 0}
    g, warned = _read(None, _config(**old))
    assert (g.encoder_no_repeat_ngram_size, g.num_beams) == (2, 4) and not warned
    _, warned = _read(None, _config(remove_invalid_values=True))
    assert warned == ["config.json: remove_invalid_values=true is not implemented by led-flax and is ignored; "
                      "the generated ids may differ from transformers'"]


@pytest.mark.parametrize("key,value", [("sequence_bias", [[[5], -2.0]]), ("guidance_scale", 1.5),
                                       ("constraints", [{"ids": [3]}]), ("force_words_ids", [[3]]),
                                       ("min_p", 0.1), ("top_h", 0.4), ("remove_invalid_values", True),
                                       ("watermarking_config", {"greenlist_ratio": 0.25}), ("stop_strings", ["."]),
                                       ("max_time", 5.0), ("penalty_alpha", 0.6), ("dola_layers", "high"),
                                       ("token_healing", True), ("num_beam", 4)])
def test_an_unimplemented_setting_is_a_warning_naming_it(tmp_path, key, value):
    (tmp_path / "generation_config.json").write_text(json.dumps({key: value, "num_beams": 2}))
    g, warned = _read(tmp_path)
    assert g.num_beams == 2 and len(warned) == 1, warned
    assert warned[0].startswith(f"{tmp_path / 'generation_config.json'}: {key}=") and "\n" not in warned[0]


@pytest.mark.parametrize("settings", [
    {"transformers_version": "4.46.0", "_from_model_config": True, "output_scores": True, "output_attentions": True,
     "return_dict_in_generate": True, "use_cache": False, "low_memory": True, "cache_implementation": "static",
     "prompt_lookup_num_tokens": 10, "num_assistant_tokens": 5},
    {"guidance_scale": 1.0, "penalty_alpha": 0.0, "remove_invalid_values": False, "sequence_bias": None,
     "stop_strings": [], "token_healing": False, "num_beam_groups": 1, "diversity_penalty": 0.5},
], ids=["bookkeeping", "off-values"])
def test_bookkeeping_and_settings_that_are_off_are_silent(settings):
    assert _read(settings)[1] == []


def test_the_warning_comes_with_the_loaded_model(tmp_path):
    """convert.load (as summarize and the CLI load a checkpoint) reads the settings and warns."""
    make_reference("conditional_generation", tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 2, "encoder_no_repeat_ngram_size": 2,
                                                                 "sequence_bias": [[[5], -2.0]]}))
    with pytest.warns(GenerationSettingWarning, match="sequence_bias"):
        loaded = convert.load(tmp_path)
    assert loaded.generation_config.encoder_no_repeat_ngram_size == 2


def test_group_beam_search_is_refused_from_a_file_or_a_keyword(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 0.5}')
    with pytest.raises(ValueError, match=r"generation_config.json: GenerationConfig.num_beam_groups=2: group .*"
                                         r"Set num_beam_groups to 1"):
        GenerationConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match="num_beam_groups=4"):
        GenerationConfig(num_beams=4).replace(num_beam_groups=4)
    config = _config(vocab_size=40)
    model = model_for(config, dtype=jnp.float32)
    with pytest.raises(ValueError, match="num_beam_groups=2"):
        generate(model, {}, np.zeros((1, 4), np.int32), num_beams=4, num_beam_groups=2, diversity_penalty=0.5)


def test_unknown_and_unimplemented_keywords_are_type_errors():
    model = model_for(_config(vocab_size=40), dtype=jnp.float32)
    ids = np.zeros((1, 4), np.int32)
    with pytest.raises(TypeError, match=r"unknown generation settings \['beams'\]"):
        generate(model, {}, ids, beams=4)
    with pytest.raises(TypeError, match=r"\['sequence_bias'\] are not implemented by led-flax"):
        generate(model, {}, ids, sequence_bias=[[[5], -2.0]])


@pytest.mark.parametrize("key,value", [
    ("encoder_no_repeat_ngram_size", -1), ("encoder_no_repeat_ngram_size", 2.5), ("encoder_repetition_penalty", 0.0),
    ("encoder_repetition_penalty", "2"),
    ("bad_words_ids", []), ("bad_words_ids", [5, 6]), ("bad_words_ids", [[5], []]), ("bad_words_ids", [[-1]]),
    ("suppress_tokens", [1.5]), ("suppress_tokens", "3"), ("begin_suppress_tokens", [-2]),
    ("exponential_decay_length_penalty", [5]), ("exponential_decay_length_penalty", [-1, 1.1]),
    ("exponential_decay_length_penalty", [5, 0.0]), ("renormalize_logits", "yes"), ("typical_p", 0.0),
    ("typical_p", 1.5), ("typical_p", "0.9"), ("epsilon_cutoff", 1.0), ("epsilon_cutoff", -0.1), ("eta_cutoff", 2.0),
    ("num_beam_groups", 0),
])
def test_a_bad_value_is_an_error_naming_the_field(key, value):
    with pytest.raises(ValueError, match=f"GenerationConfig.{key}"):
        GenerationConfig(**{key: value})
    with pytest.raises(ValueError, match=f"generation settings: GenerationConfig.{key}"):
        GenerationConfig.from_hf({key: value})


def test_forcing_a_suppressed_token_is_an_error():
    with pytest.raises(ValueError, match="forced_eos_token_id .*suppress_tokens"):
        GenerationConfig(forced_eos_token_id=2, suppress_tokens=[2, 3])
    GenerationConfig(forced_eos_token_id=[2, 4], suppress_tokens=[2, 3])  # 4 can still be forced


@pytest.mark.parametrize("key,value", [("bad_words_ids", [[3], [4, 40]]), ("suppress_tokens", [41]),
                                       ("begin_suppress_tokens", [3, 99])])
def test_token_ids_outside_the_vocabulary_are_errors(key, value):
    with pytest.raises(ValueError, match=rf"GenerationConfig.{key} holds token ids outside the vocabulary \[0, 40\)"):
        GenerationConfig(**{key: value}).resolved(_config(vocab_size=40))


def test_bad_words_that_ban_only_eos_are_an_error():
    with pytest.raises(ValueError, match="bans only the eos token.*min_new_tokens"):
        GenerationConfig(bad_words_ids=[[2]]).resolved(_config())
    GenerationConfig(bad_words_ids=[[2], [5]]).resolved(_config())  # eos is dropped, 5 stays banned


def test_a_generation_config_json_that_is_not_json_names_the_file(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"num_beams": 4,')
    with pytest.raises(ConfigError, match="generation_config.json is not valid JSON"):
        GenerationConfig.from_hf(tmp_path)
    (tmp_path / "generation_config.json").write_text('[4]')
    with pytest.raises(ConfigError, match="generation_config.json holds a JSON list"):
        GenerationConfig.from_hf(tmp_path)


def test_settings_are_resolved_once_and_taken_as_they_are_after(monkeypatch):
    """`resolved` marks its result for the model config (no field: records and program keys are as
    before); a resolved config passes through `resolved` again untouched, and any change unmarks it.
    The oracle for the values: one resolution from scratch."""
    import dataclasses
    config, other = _config(), _config(vocab_size=200)
    fresh = GenerationConfig(max_new_tokens=5, num_beams=2)
    once = fresh.resolved(config)
    assert once.max_length == 6 and once.max_new_tokens is None and once.pad_token_id == config.pad_token_id
    assert once.is_resolved_for(config) and not once.is_resolved_for(other) and not fresh.is_resolved_for(config)
    assert once == GenerationConfig(max_new_tokens=5, num_beams=2).resolved(config) and hash(once) == hash(
        GenerationConfig(max_length=6, num_beams=2).resolved(config))
    assert "_resolved_for" not in dataclasses.asdict(once)

    calls = []
    replace = GenerationConfig.replace
    monkeypatch.setattr(GenerationConfig, "replace", lambda self, **k: calls.append(k) or replace(self, **k))
    assert once.resolved(config) is once and calls == []  # nothing recomputed
    changed = once.replace(num_beams=3)
    assert not changed.is_resolved_for(config) and changed.resolved(config).is_resolved_for(config)
    assert once.resolved(other).is_resolved_for(other)  # another model: resolved again, against it
