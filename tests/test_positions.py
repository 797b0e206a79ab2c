"""Encoder position tables extended by tiling (allenai's way from BART to LED): the rows, the outputs
within the source table (the source model as oracle), and past it (transformers running the same
extended checkpoint as oracle)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import transformers

from led_flax import convert
from led_flax import ConfigError, model_for
from led_flax.io import checkpoint
from led_flax.cli import main as cli_main
from led_flax.model.positions import extend_encoder_positions

from conftest import VOCAB, make_reference, rel_err


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("positions") / "src"
    make_reference("conditional_generation", d, seed=21, max_encoder_position_embeddings=64, attention_window=[8, 8])
    with open(d / "tokenizer_config.json", "w") as f:
        json.dump({"model_max_length": 64, "tokenizer_class": "LEDTokenizer"}, f)
    return d


def _inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (2, n))
    ids[:, -1] = 2
    am = np.ones_like(ids)
    am[1, n - 9:] = 0
    gm = np.zeros_like(ids)
    gm[:, 0] = 1
    gm[0, n // 2] = 1
    return ids, am, gm


def test_rows_are_the_source_table_tiled(source):
    config, params = convert.from_hf(source)
    new_config, new = extend_encoder_positions(config, params, 256)
    old = np.asarray(params["led"]["encoder"]["embed_positions"]["embedding"])
    table = new["led"]["encoder"]["embed_positions"]["embedding"]
    assert new_config.max_encoder_position_embeddings == 256 and table.shape == (256, old.shape[1])
    for i in (0, 1, 63, 64, 65, 130, 255):
        np.testing.assert_array_equal(table[i], old[i % 64])
    # everything else is the same tree, untouched
    assert new["led"]["decoder"] is params["led"]["decoder"] and new["led"]["shared"] is params["led"]["shared"]


def test_convert_extends_and_transformers_agrees_past_the_source_table(source, tmp_path):
    done = convert.convert_checkpoint(source, tmp_path / "ours", max_encoder_positions=256)
    ckpt = checkpoint.load(done.path)
    assert ckpt.config.max_encoder_position_embeddings == 256
    with open(tmp_path / "ours" / "tokenizer_config.json") as f:
        assert json.load(f)["model_max_length"] == 256
    src_config, src_params = convert.from_hf(source)
    model, src_model = model_for(ckpt.config), model_for(src_config)

    ids, am, gm = _inputs(48)  # within the source table: the same outputs as the source model
    dec = ids[:, :5]
    a = model.apply({"params": ckpt.params}, ids, attention_mask=am, global_attention_mask=gm, decoder_input_ids=dec)
    b = src_model.apply({"params": src_params}, ids, attention_mask=am, global_attention_mask=gm, decoder_input_ids=dec)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))

    convert.export_checkpoint(done.path, tmp_path / "hf")
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["max_encoder_position_embeddings"] == 256
    ref = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    ids, am, gm = _inputs(200, seed=1)  # past the source's 64 positions
    ours = model.apply({"params": ckpt.params}, ids, attention_mask=am, global_attention_mask=gm,
                       decoder_input_ids=ids[:, :6])
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                     global_attention_mask=torch.tensor(gm), decoder_input_ids=torch.tensor(ids[:, :6]))
    assert rel_err(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state) <= 1e-5
    assert rel_err(ours.logits, theirs.logits) <= 1e-5


@pytest.mark.parametrize("n, message", [
    (64, "must be larger than the checkpoint's 64 encoder positions"),
    (32, "must be larger than the checkpoint's 64 encoder positions"),
    (100, "is not a multiple of the largest attention window 8; use 104"),
])
def test_extensions_that_cannot_work_are_refused_before_any_work(source, tmp_path, capsys, n, message):
    with pytest.raises(ConfigError, match=message):
        convert.convert_checkpoint(source, tmp_path / "x", max_encoder_positions=n)
    assert not os.path.exists(tmp_path / "x")
    assert cli_main(["convert", str(source), str(tmp_path / "y"), "--max-encoder-positions", str(n), "--quiet"]) == 2
    assert message in capsys.readouterr().err and not os.path.exists(tmp_path / "y")


def test_training_configs_extend_the_model_they_fine_tune(source):
    from led_flax.train import config as config_lib
    from led_flax.train.config import TrainConfigError
    from led_flax.train.model import architecture, load_pretrained
    cfg = config_lib.from_dict({"model": {"init": str(source), "max_encoder_positions": 128}})
    assert architecture(cfg).max_encoder_position_embeddings == 128
    loaded = load_pretrained(cfg)
    assert loaded.config.max_encoder_position_embeddings == 128
    assert loaded.params["led"]["encoder"]["embed_positions"]["embedding"].shape[0] == 128
    with pytest.raises(TrainConfigError, match="model.max_encoder_positions 100 is not a multiple"):
        architecture(config_lib.from_dict({"model": {"init": str(source), "max_encoder_positions": 100}}))
