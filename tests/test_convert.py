"""Oracle: transformers' own checkpoints and its `from_pretrained`, for conversion both ways."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from led_flax import convert
from led_flax.convert import HeadInitialisedWarning, MappingError
from led_flax.io import checkpoint
from led_flax import model_for
from led_flax.utils import trees
from led_flax.cli import main as cli_main

from conftest import make_reference

HF_CLASSES = {
    "base": transformers.LEDModel,
    "conditional_generation": transformers.LEDForConditionalGeneration,
    "question_answering": transformers.LEDForQuestionAnswering,
}


def _tensors(directory):
    return load_file(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("head", ["base", "conditional_generation", "question_answering"])
def test_round_trip_is_bit_exact_and_loads_in_transformers(tmp_path, head, dtype):
    model = make_reference(head, tmp_path / "src", seed=3)
    if dtype == "bfloat16":
        model.to(torch.bfloat16).save_pretrained(tmp_path / "src")
    config, params = convert.from_hf(tmp_path / "src")
    convert.to_hf(config, params, tmp_path / "back")
    src, back = _tensors(tmp_path / "src"), _tensors(tmp_path / "back")
    assert sorted(src) == sorted(back)
    for key in src:
        assert src[key].dtype == back[key].dtype, key
        assert src[key].tobytes() == back[key].tobytes(), f"{key} changed in the round trip"
    loaded, info = HF_CLASSES[head].from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    ref_state, new_state = model.state_dict(), loaded.state_dict()
    for key, value in ref_state.items():
        assert torch.equal(value.to(new_state[key].dtype), new_state[key]), key


def test_4x_sequence_classification_checkpoint_with_tied_copies(checkpoints, tmp_path):
    directory, _ = checkpoints["sequence_classification"]
    src = _tensors(directory)
    assert "led.encoder.embed_tokens.weight" in src  # 4.x wrote the tied copies
    config, params = convert.from_hf(directory)
    assert config.head == "sequence_classification" and config.num_labels == 3
    convert.to_hf(config, params, tmp_path / "back")
    back = _tensors(tmp_path / "back")
    expected = {k: v for k, v in src.items() if "embed_tokens" not in k}
    assert sorted(back) == sorted(expected)
    for k in expected:
        assert back[k].tobytes() == expected[k].tobytes(), k


def test_tied_copies_must_be_equal(checkpoints, tmp_path):
    directory, _ = checkpoints["conditional_generation"]
    shutil.copytree(directory, tmp_path / "ckpt")
    state = _tensors(tmp_path / "ckpt")
    state["led.encoder.embed_tokens.weight"] = state["led.shared.weight"].copy()
    state["lm_head.weight"] = state["led.shared.weight"].copy()
    save_file(state, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    convert.from_hf(tmp_path / "ckpt")  # equal copies (4.x style) load
    state["lm_head.weight"][3, 2] += 1.0
    save_file(state, tmp_path / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MappingError, match="lm_head.weight.*tied"):
        convert.from_hf(tmp_path / "ckpt")


def test_sharded_safetensors_and_pytorch_bin(checkpoints, tmp_path):
    directory, model = checkpoints["conditional_generation"]
    _, expected = convert.from_hf(directory)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(os.path.join(directory, "config.json"), tmp_path / "bin")
    for d in ("sharded", "bin"):
        _, params = convert.from_hf(tmp_path / d)
        flat_a, flat_b = trees.flatten(params), trees.flatten(expected)
        assert sorted(flat_a) == sorted(flat_b)
        for k in flat_a:
            np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=f"{d}: {k}")


def test_pytorch_bin_without_torch_says_what_to_install(checkpoints, tmp_path, monkeypatch):
    directory, model = checkpoints["base"]
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    shutil.copy(os.path.join(directory, "config.json"), tmp_path / "bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="pip install torch"):
        convert.from_hf(tmp_path / "bin")


def test_loading_into_another_head_initialises_it_and_says_so(checkpoints, tmp_path):
    directory, _ = checkpoints["conditional_generation"]
    _, lm_params = convert.from_hf(directory)
    with pytest.warns(HeadInitialisedWarning, match=r"qa_outputs/kernel.*not used: \['final_logits_bias'\]"):
        config, params = convert.from_hf(directory, head="question_answering")
    assert config.head == "question_answering"
    body_a, body_b = trees.flatten(params["led"]), trees.flatten(lm_params["led"])
    for k in body_b:
        np.testing.assert_array_equal(body_a[k], body_b[k])
    assert np.abs(params["qa_outputs"]["kernel"]).sum() > 0
    convert.to_hf(config, params, tmp_path / "qa")
    _, info = transformers.LEDForQuestionAnswering.from_pretrained(tmp_path / "qa", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    base_cfg, base = convert.from_hf(checkpoints["base"][0], head="conditional_generation")
    assert "final_logits_bias" in base and base_cfg.head == "conditional_generation"


def test_truncated_or_corrupt_safetensors_is_a_clear_error(checkpoints, tmp_path):
    directory, _ = checkpoints["base"]
    shutil.copytree(directory, tmp_path / "t")
    path = tmp_path / "t" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        convert.from_hf(tmp_path / "t")
    path.write_bytes(b"\x00garbage" + data[8:])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        convert.from_hf(tmp_path / "t")


def test_config_that_does_not_match_the_weights_lists_every_problem(checkpoints, tmp_path):
    directory, _ = checkpoints["conditional_generation"]
    shutil.copytree(directory, tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["encoder_ffn_dim"] = 40
    cfg["decoder_layers"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MappingError) as err:
        convert.from_hf(tmp_path / "c")
    msg = str(err.value)
    assert "led.decoder.layers.2.fc1.weight" in msg  # missing (a third decoder layer)
    assert "led.encoder.layers.0.fc1.weight: checkpoint (24, 16), config.json implies (40, 16)" in msg
    assert "led.encoder.layers.1.fc2.weight" in msg

    shutil.copytree(directory, tmp_path / "u")
    state = _tensors(tmp_path / "u")
    state["led.encoder.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(state, tmp_path / "u" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MappingError, match=r"unused: \['led.encoder.layers.0.extra.weight'\]"):
        convert.from_hf(tmp_path / "u")


def test_own_checkpoint_round_trip_and_atomic_overwrite(checkpoints, tmp_path, monkeypatch):
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    out = tmp_path / "ours"
    checkpoint.save(out, config, params)
    ckpt = checkpoint.load(out)
    cfg2, params2, head = ckpt.config, ckpt.params, ckpt.head
    assert cfg2 == config and head == "conditional_generation"
    for k, v in trees.flatten(params).items():
        np.testing.assert_array_equal(trees.flatten(params2)[k], v)
    with pytest.raises(FileExistsError, match="overwrite"):
        checkpoint.save(out, config, params)

    before = sorted(os.listdir(out))
    monkeypatch.setattr(type(config), "save", lambda self, d: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(out, config, params, overwrite=True)
    assert sorted(os.listdir(out)) == before  # the good checkpoint is untouched
    assert checkpoint.load(out).config == config
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temporary left behind

    with pytest.raises(checkpoint.CheckpointError, match="HF checkpoint"):
        checkpoint.load(directory)
    with pytest.raises(checkpoint.CheckpointError, match="not a led-flax checkpoint"):
        checkpoint.load(tmp_path)


def test_convert_checkpoint_writes_a_complete_led_flax_directory(checkpoints, tmp_path):
    directory, ref = checkpoints["conditional_generation"]
    shutil.copytree(directory, tmp_path / "src")
    (tmp_path / "src" / "vocab.json").write_text("{}")  # tokenizer and generation files travel along
    (tmp_path / "src" / "generation_config.json").write_text('{"num_beams": 4}')
    done = convert.convert_checkpoint(tmp_path / "src", tmp_path / "ours", dtype="bfloat16")
    ckpt = checkpoint.load(done.path)
    assert done == convert.Conversion(path=str(tmp_path / "ours"), head="conditional_generation",
                                      extra_files=("vocab.json", "generation_config.json"),
                                      param_bytes=sum(x.nbytes for x in trees.flatten(ckpt.params).values()))
    assert ckpt.head == "conditional_generation"
    _, expected = convert.from_hf(directory)
    flat, ref_flat = trees.flatten(ckpt.params), trees.flatten(expected)
    assert sorted(flat) == sorted(ref_flat)
    for k, v in ref_flat.items():
        assert flat[k].dtype.name == "bfloat16" and flat[k].tobytes() == v.astype(flat[k].dtype).tobytes(), k
    assert (tmp_path / "ours" / "generation_config.json").read_text() == '{"num_beams": 4}'

    with pytest.warns(HeadInitialisedWarning, match="qa_outputs"):
        qa = convert.convert_checkpoint(tmp_path / "src", tmp_path / "ours", head="question_answering",
                                        overwrite=True)
    assert qa.head == "question_answering" and checkpoint.load(qa.path).head == "question_answering"

    with pytest.raises(FileExistsError, match="overwrite"):
        convert.convert_checkpoint(tmp_path / "nowhere", tmp_path / "ours")  # refused before reading anything
    with pytest.raises(checkpoint.CheckpointError, match="not an HF LED checkpoint"):
        convert.convert_checkpoint(tmp_path / "ours", tmp_path / "again")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint directory"):
        convert.convert_checkpoint(tmp_path / "nowhere", tmp_path / "again")
    assert not os.path.exists(tmp_path / "again")


def test_export_checkpoint_round_trips_to_transformers(checkpoints, tmp_path):
    directory, ref = checkpoints["conditional_generation"]
    shutil.copytree(directory, tmp_path / "src")
    (tmp_path / "src" / "merges.txt").write_text("#version: 0.2\n")
    ours = convert.convert_checkpoint(tmp_path / "src", tmp_path / "ours").path
    out = convert.export_checkpoint(ours, tmp_path / "hf")
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors"]
    loaded = transformers.LEDForConditionalGeneration.from_pretrained(out)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileExistsError, match="overwrite"):
        convert.export_checkpoint(ours, out)
    convert.export_checkpoint(ours, out, overwrite=True)
    with pytest.raises(checkpoint.CheckpointError, match="not a led-flax checkpoint"):
        convert.export_checkpoint(directory, tmp_path / "hf2")


def test_cli_convert_and_export(checkpoints, tmp_path, capsys):
    directory, ref = checkpoints["conditional_generation"]
    (tmp_path / "src").mkdir()
    for f in os.listdir(directory):
        shutil.copy(os.path.join(directory, f), tmp_path / "src")
    (tmp_path / "src" / "vocab.json").write_text("{}")  # tokenizer files travel along
    assert cli_main(["convert", str(tmp_path / "src"), str(tmp_path / "ours"), "--quiet"]) == 0
    assert "(conditional_generation, 2 tokenizer/generation files)" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "ours" / "vocab.json")
    assert checkpoint.is_led_flax_checkpoint(tmp_path / "ours")
    assert cli_main(["convert", str(tmp_path / "src"), str(tmp_path / "ours"), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    loaded = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path / "hf")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert cli_main(["export", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "ours"), str(tmp_path / "hf"), "--overwrite"]) == 0
    assert cli_main(["convert", "allenai/not-here-offline", str(tmp_path / "x")]) == 2
    assert "could not fetch allenai/not-here-offline" in capsys.readouterr().err
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "y"), "--quiet"]) == 2
    assert "not an HF LED checkpoint" in capsys.readouterr().err


def test_cli_head_choices_are_the_configs_heads():
    from led_flax.cli import build_parser
    from led_flax.model.config import HEAD_TO_ARCHITECTURE
    convert_parser = build_parser()._subparsers._group_actions[0].choices["convert"]
    head = next(a for a in convert_parser._actions if a.dest == "head")
    assert list(head.choices) == list(HEAD_TO_ARCHITECTURE)


def test_bf16_model_runs_from_converted_params(checkpoints):
    """A bfloat16 compute model over float32 master weights stays close to the float32 one."""
    import jax.numpy as jnp
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    ids = np.array([[0, 5, 9, 2]])
    f32 = model_for(config).apply({"params": params}, ids).logits
    bf16 = model_for(config, dtype=jnp.bfloat16).apply({"params": params}, ids).logits
    assert bf16.dtype == jnp.float32
    assert np.abs(np.asarray(bf16) - np.asarray(f32)).max() / np.abs(np.asarray(f32)).max() < 0.05
