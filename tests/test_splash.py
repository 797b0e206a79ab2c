"""`attention_implementation="splash"`: the Pallas splash-attention kernel (interpret mode on this CPU).

Oracles: dense attention under an explicit band-plus-global mask (tests/dense_oracle.py) and the xla
path (`sliding_window_attention`), outputs to 1e-5 and gradients to 1e-4 in float32; the whole model
against transformers' LED on a tiny checkpoint; and the TPU lowering, whose module must hold the
kernel's custom call (for the encoder and for a training step on a data x fsdp x tensor mesh).
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AbstractMesh, NamedSharding

from led_flax import LEDConfig, convert, model_for
from led_flax.decoding import GenerationConfig, generation
from led_flax.decoding.settings import split
from led_flax.model.attention import (EncoderMasks, choose_implementation, count_global_slots, global_token_indices,
                                      kernel_mesh, longformer_self_attention)
from led_flax.model.config import ConfigError
from led_flax.parallel import sequence, sharding as shd
from led_flax.summarization.batch import batch_layout
from led_flax.train import step as step_lib
from led_flax.train.config import OptimizerConfig

from conftest import rel_err, run_on_eight_devices
from dense_oracle import dense_reference_attention
from test_parity import batch, torch_inputs

OUT_TOL, GRAD_TOL = 1e-5, 1e-4  # norm-relative, float32


@partial(jax.jit, static_argnames=("one_sided", "slots", "implementation"))
def _attention_and_grads(inputs, real, is_global, *, one_sided, slots, implementation):
    """The layer's whole self-attention (band, global columns, global rows) and the gradients of a
    weighted sum of it with respect to the six projected inputs."""
    def attend(inputs):
        q, k, v, qg_all, kg, vg = inputs
        idx, valid = global_token_indices(is_global, slots)
        q_global = jnp.take_along_axis(qg_all, jnp.minimum(idx, q.shape[1] - 1)[:, :, None, None], axis=1)
        masks = EncoderMasks(real=real, is_global=is_global, global_idx=idx, global_valid=valid)
        return longformer_self_attention(q, k, v, q_global, kg, vg, masks, one_sided=one_sided,
                                         implementation=implementation)[0]

    out, pullback = jax.vjp(attend, inputs)
    weights = jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)  # every output element counts
    return out, pullback(weights)[0]


def _case(seed, n, one_sided, pattern):
    rng = np.random.default_rng(seed)
    b, h, d = 2, 2, 8
    inputs = tuple(jnp.asarray(rng.normal(size=(b, n, h, d)).astype(np.float32)) for _ in range(6))
    real = np.ones((b, n), bool)
    real[1, n - n // 3:] = False  # the second row padded
    glob = np.zeros((b, n), bool)
    if pattern == "one":
        glob[0, n // 2] = True
    elif pattern == "several":  # inside and outside each other's windows, and the last real token of row 1
        glob[0, [0, 1, n // 2, n - 1]] = True
        glob[1, [n // 4, n - n // 3 - 1]] = True
    return inputs, real, glob & real


# windows 2, 6 and 16; lengths below one kernel block and across several (130, 300); "one": a global
# token in the first row, none in the second (every token global is in the whole-model cases below)
CASES = [(37, 1, "one"), (130, 3, "several"), (300, 8, "several")]


@pytest.mark.parametrize("n,one_sided,pattern", CASES)
def test_splash_equals_the_dense_oracle_and_the_xla_path(n, one_sided, pattern):
    inputs, real, glob = _case(n + one_sided, n, one_sided, pattern)
    slots = count_global_slots(glob)
    run = partial(_attention_and_grads, inputs, jnp.asarray(real), jnp.asarray(glob), one_sided=one_sided, slots=slots)
    out, grads = run(implementation="splash")
    xla_out, xla_grads = run(implementation="xla")
    dense = dense_reference_attention(*inputs, one_sided=one_sided, attention_mask=real, is_global=glob)
    where = f"n={n} window={2 * one_sided} globals={pattern}"
    assert rel_err(out, dense) <= OUT_TOL, where
    assert rel_err(out, xla_out) <= OUT_TOL, where
    assert np.all(np.asarray(out)[~real] == 0), f"{where}: rows of padding must come out as zeros"
    for name, g, x in zip(("q", "k", "v", "query_global", "key_global", "value_global"), grads, xla_grads):
        assert rel_err(g, x) <= GRAD_TOL, f"{where}: the gradient of {name} differs by {rel_err(g, x):.1e}"


@pytest.mark.parametrize("case", ["padded_many_globals", "mostly_global"])
def test_the_splash_model_matches_transformers(checkpoints, case):
    directory, ref_model = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    model = model_for(config.replace(attention_implementation="splash"))
    inputs = batch(case, seed=3)
    labels = np.random.default_rng(4).integers(0, config.vocab_size, inputs["decoder_input_ids"].shape)
    with torch.no_grad():
        ref = ref_model(**torch_inputs(inputs), labels=torch.tensor(labels))
    ours = jax.jit(lambda p: model.apply({"params": p}, **inputs, labels=labels))(params)
    for name in ("encoder_last_hidden_state", "logits", "loss"):
        err = rel_err(getattr(ours, name), getattr(ref, name))
        assert err <= OUT_TOL, f"{case}: {name} differs from transformers by {err:.1e}"


def test_what_splash_cannot_do_is_refused_with_the_fix():
    assert choose_implementation("auto", backend="tpu") == "splash"
    assert choose_implementation("auto", backend="cpu") == "xla"
    assert choose_implementation("auto", backend="tpu", output_attentions=True) == "xla"
    assert choose_implementation("auto", backend="tpu", attention_dropout=0.1) == "xla"
    assert choose_implementation("splash", backend="cpu") == "splash"  # interpret mode, for tests
    for kwargs, words in [(dict(output_attentions=True), "returns no attention maps"),
                          (dict(attention_dropout=0.1), "train without dropout .*, set attention_dropout to 0"),
                          (dict(backend="gpu"), "TPU kernel")]:
        with pytest.raises(ValueError, match=words) as e:
            choose_implementation("splash", **kwargs)
        assert "use attention_implementation 'xla'" in str(e.value)
    with pytest.raises(ValueError, match="must be one of xla, splash, auto, got 'flash'"):
        choose_implementation("flash")
    with pytest.raises(ConfigError, match="use one of xla, splash, auto"):
        LEDConfig(attention_implementation="flash")
    # attention dropout is refused where it runs (training), not for inference with such a config
    assert LEDConfig(attention_implementation="splash", attention_dropout=0.1).attention_implementation == "splash"
    config = LEDConfig(encoder_layers=1, decoder_layers=1, d_model=16, encoder_attention_heads=2,
                       decoder_attention_heads=2, attention_window=4, attention_implementation="splash")
    assert "attention_implementation" not in config.to_hf()  # a run-time choice: config.json stays HF's
    assert LEDConfig.from_hf(config.to_hf()).attention_implementation == "xla"
    model = model_for(config)
    ids = jnp.ones((1, 8), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, decoder_input_ids=ids[:, :2]))
    with pytest.raises(ValueError, match="output_attentions is not available with attention_implementation 'splash'"):
        jax.eval_shape(lambda p: model.apply(p, ids, decoder_input_ids=ids[:, :2], output_attentions=True), params)


CONFIG = LEDConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=8,
                   max_encoder_position_embeddings=256, max_decoder_position_embeddings=32,
                   attention_implementation="splash")


def _custom_calls(text: str) -> int:
    return text.count("tpu_custom_call")


def test_the_splash_encoder_and_training_step_lower_for_tpu_with_the_kernel():
    model = model_for(CONFIG)
    ids = jax.ShapeDtypeStruct((2, 256), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32),
                                               decoder_input_ids=jnp.ones((1, 2), jnp.int32))["params"])
    encode = jax.jit(lambda p, i, m, g: model.apply({"params": p}, i, attention_mask=m, global_attention_mask=g,
                                                    num_global_slots=2, method="encode").last_hidden_state)
    text = jax.export.export(encode, platforms=("tpu",))(params, ids, ids, ids).mlir_module()
    assert _custom_calls(text) >= 1, "the encoder lowered for TPU does not hold the splash kernel"

    # summarize's and the server's program: the batch over 8 devices with no mesh set by the caller;
    # generate traces it under `kernel_mesh` (XLA cannot partition a Pallas call by itself)
    layout = batch_layout(AbstractMesh((8, 1, 1, 1), shd.MESH_AXES))
    rows = jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=layout)
    settings = split(GenerationConfig(max_length=6, num_beams=2).resolved(CONFIG), 8)
    with kernel_mesh(CONFIG.attention_implementation, layout):
        text = jax.export.export(generation.program_for(model), platforms=("tpu",))(
            params, rows, rows, rows, jax.random.PRNGKey(0), settings.values, model=model, cfg=settings.static,
            slots=1, mesh=None).mlir_module()
    assert _custom_calls(text) >= 1, "summarize's program lowered for TPU does not hold the splash kernel"

    # one document over 8 sequence devices: the kernel on each device's slice
    mesh = AbstractMesh((1, 1, 8, 1), shd.MESH_AXES)
    tokens = jax.ShapeDtypeStruct((1, 256), jnp.int32, sharding=NamedSharding(mesh, sequence.TOKENS))
    with jax.sharding.use_abstract_mesh(mesh):
        text = jax.export.export(sequence.encode_program(model, mesh, 1), platforms=("tpu",))(
            params, tokens, {"attention_mask": tokens, "global_attention_mask": tokens}).mlir_module()
    assert _custom_calls(text) >= 1 and "collective_permute" in text, "the sequence-sharded splash encoder"

    mesh = AbstractMesh((2, 2, 1, 2), shd.MESH_AXES)  # data x fsdp x sequence x tensor: the kernel under shard_map
    train_model = model_for(CONFIG, "conditional_generation", param_dtype=jnp.float32, remat="full", scan_layers=True)
    optimizer = OptimizerConfig()
    tx = step_lib.optimizer(optimizer, 10)
    shapes = jax.eval_shape(step_lib.fresh_state(train_model, tx, 0), jax.random.PRNGKey(0))
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    step = step_lib.make_train_step(train_model, tx, step_lib.schedule(optimizer, 10), mesh, shardings)
    state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    layout = step_lib.batch_shardings(mesh)
    batch_ = {k: jax.ShapeDtypeStruct((1, 4, 8 if k == "labels" else 256), jnp.int32, sharding=layout[k])
              for k in layout}  # [accumulation, batch, tokens]
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(shd.RULES):
        exported = jax.export.export(step.jitted, platforms=("tpu",))(state, batch_)
    text = exported.mlir_module()
    # the forward kernel, and the backward's dq and dkv kernels, in the scanned layer (remat recomputes
    # the forward inside the backward's loop)
    assert _custom_calls(text) >= 3, f"the training step holds {_custom_calls(text)} splash kernel calls"
    assert exported.nr_devices == 8


def test_the_kernel_runs_on_each_sequence_shard():
    """8 fake devices, data x sequence x tensor = 2 x 2 x 2: each device runs the kernel on its slice,
    with its neighbours' edge keys, against the unsharded xla model: the encoder (globals on shard
    boundaries, padding across a shard), greedy generation and every gradient of the loss
    (tests/sequence_worker.py)."""
    r = run_on_eight_devices("sequence_worker.py", "splash")
    assert r["devices"] == 8
    encoder = r["encoder"]["window8_globals_on_shard_boundaries_padding_across_one/data2xsequence2xtensor2"]
    assert encoder["rel"] <= OUT_TOL and encoder["sharding"].endswith("'sequence')"), encoder  # tokens split
    greedy = r["generate"]["greedy"]
    assert greedy["ids"] == greedy["ref"] and greedy["scores_rel"] <= OUT_TOL, greedy
    grads = r["grads"]["data2xsequence2xtensor2"]
    assert grads["loss_rel"] <= OUT_TOL and grads["worst_leaf_rel"] <= GRAD_TOL, grads


def test_the_kernel_runs_under_a_mesh_split_over_batch_and_heads():
    """8 fake devices, data x fsdp x tensor = 2 x 2 x 2: `shard_map` around the kernel (the partitioner
    cannot split a pallas_call), against the xla path on one device."""
    r = run_on_eight_devices("splash_mesh_worker.py")
    assert r["devices"] == 8 and r["manual"] >= 1, "the kernel did not run under shard_map"
    assert r["loss_err"] <= OUT_TOL and r["grad_err"] <= GRAD_TOL, r


def test_summarize_and_serve_take_the_choice_and_a_resume_sees_it(checkpoints):
    from led_flax.cli.commands import build_parser
    from led_flax.serving import ServeOptions
    from led_flax.summarization import SummarizeOptions
    from led_flax.summarization.progress import RunRecord

    for options in (SummarizeOptions, ServeOptions):
        with pytest.raises(ValueError, match="attention_implementation must be one of"):
            options(attention_implementation="flash")
    args = build_parser().parse_args(["summarize", "--model", "m", "--attention-implementation", "splash", "doc.txt"])
    assert args.attention_implementation == "splash"
    loaded = convert.load(checkpoints["conditional_generation"][0])
    splash = loaded.with_compute(attention_implementation="splash")
    assert splash.module.config.attention_implementation == splash.config.attention_implementation == "splash"
    generation = loaded.generation_config.resolved(loaded.config)
    before, after = (RunRecord.build(m, generation, truncate=True) for m in (loaded, splash))
    assert any("attention_implementation" in line for line in before.differences(after))


def test_training_refuses_what_splash_cannot_do_before_any_work(capsys):
    from cli_helpers import run_main
    r = run_main(capsys, "train", "--config", "tiny-aclsum", "--dry-run", "--set", "model.attention_implementation=splash",
                 "--set", "model.led.attention_dropout=0.1")
    assert r.code == 2 and r.err == (
        "led-flax train: error: model.attention_implementation splash has no attention dropout, but the model's "
        "attention_dropout is 0.1; set model.dropout false, use model.attention_implementation xla (auto picks it), "
        "or, for a model from scratch, model.led.attention_dropout 0\n")
    r = run_main(capsys, "train", "--config", "tiny-aclsum", "--dry-run", "--set",
                 "model.led.attention_implementation=splash")
    assert r.code == 2 and "set model.attention_implementation instead" in r.err, r.err
