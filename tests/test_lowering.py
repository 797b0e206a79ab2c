"""Every program a user runs, lowered for TPU and CUDA from this CPU (`jax.export`, no compiling): the
training step on an 8-device abstract mesh (fsdp and tensor axes, scanned layers, `remat: full`,
float32 and bfloat16), `generate` (greedy and beam; float weights, int8 weights, the int8 cross
cache), summarize's bucket program (the batch over 8 abstract devices), and the sequence-sharded
encoder on an 8-device sequence mesh. Oracle: the checker (tests/lowering.py) refuses a planted host
callback and planted float64, naming the program and the op."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, NamedSharding

from led_flax import LEDConfig, model_for
from led_flax.decoding import GenerationConfig, generation
from led_flax.decoding.settings import split
from led_flax.model import QuantizeSpec
from led_flax.model.quantize import quantize_params
from led_flax.parallel import sequence
from led_flax.parallel import sharding as shd
from led_flax.summarization.batch import batch_layout
from led_flax.train import step as step_lib
from led_flax.train.config import OptimizerConfig

from lowering import LoweringError, lower

CONFIG = LEDConfig(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=8,
                   max_encoder_position_embeddings=64, max_decoder_position_embeddings=32)


def _abstract_params(model):
    ids = jnp.ones((1, 8), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, decoder_input_ids=ids[:, :2])["params"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_training_step_lowers_on_an_fsdp_and_tensor_mesh(dtype):
    mesh = AbstractMesh((2, 2, 1, 2), shd.MESH_AXES)  # data x fsdp x sequence x tensor: 8 devices
    model = model_for(CONFIG, "conditional_generation", dtype=dtype, param_dtype=jnp.float32, remat="full",
                      scan_layers=True)
    optimizer = OptimizerConfig()
    tx = step_lib.optimizer(optimizer, 10)
    shapes = jax.eval_shape(step_lib.fresh_state(model, tx, 0), jax.random.PRNGKey(0))
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    step = step_lib.make_train_step(model, tx, step_lib.schedule(optimizer, 10), mesh, shardings)
    state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                                   shardings)
    layout = step_lib.batch_shardings(mesh)
    batch = {k: jax.ShapeDtypeStruct((2, 4, 8 if k == "labels" else 32), jnp.int32, sharding=layout[k])
             for k in layout}  # [accumulation, batch, tokens]
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(shd.RULES):
        exported = lower(f"the training step ({jnp.dtype(dtype).name})", step.jitted, state, batch)
    assert exported.nr_devices == 8 and set(exported.platforms) == {"tpu", "cuda"}
    # the parameters and moments stay sharded over fsdp and tensor in the lowered program (Shardy's
    # attributes on the arguments: at least one per parameter, three times over with AdamW's moments)
    text = exported.mlir_module()
    assert 'sdy.mesh @mesh = <["data"=2, "fsdp"=2, "sequence"=1, "tensor"=2]>' in text
    start = text.index("func.func public @main(")
    signature = text[start:text.index("\n", start)]
    split = re.findall(r'sdy.sharding = #sdy.sharding<@mesh, \[[^\]]*"(?:fsdp|tensor)"', signature)
    assert len(split) >= len(jax.tree_util.tree_leaves(shapes["params"])), "the train state is not sharded"


GENERATION = {
    "greedy, float weights": (GenerationConfig(max_length=12), None, "float"),
    "beam 4, float weights": (GenerationConfig(max_length=12, num_beams=4, no_repeat_ngram_size=2), None, "float"),
    "beam 4, int8 weights": (GenerationConfig(max_length=12, num_beams=4), QuantizeSpec("int8"), "float"),
    "beam 4, int8 weights and cross cache": (GenerationConfig(max_length=12, num_beams=4), QuantizeSpec("int8"),
                                             "int8"),
}


def _generation_program(settings, spec, cross_cache):
    model = model_for(CONFIG, cross_cache=cross_cache)
    params = _abstract_params(model_for(CONFIG))
    if spec is not None:
        params = jax.eval_shape(lambda p: quantize_params(p, spec), params)
    return generation.program_for(model), model, params, split(settings.resolved(CONFIG), 2)


@pytest.mark.parametrize("case", list(GENERATION))
def test_generate_lowers(case):
    program, model, params, settings = _generation_program(*GENERATION[case])
    ids = jax.ShapeDtypeStruct((2, 32), jnp.int32)
    exported = lower(f"generate ({case})", program, params, ids, ids, ids, jax.random.PRNGKey(0), settings.values,
                     model=model, cfg=settings.static, slots=1, mesh=None)
    assert set(exported.platforms) == {"tpu", "cuda"}


def test_a_summarize_bucket_program_lowers_over_eight_devices():
    mesh = AbstractMesh((8, 1, 1, 1), shd.MESH_AXES)
    program, model, params, settings = _generation_program(
        GenerationConfig(max_length=12, num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3), None, "float")
    ids = jax.ShapeDtypeStruct((8, 64), jnp.int32, sharding=batch_layout(mesh))  # 8 documents, a 64-token bucket
    with jax.sharding.use_abstract_mesh(mesh):
        exported = lower("summarize's bucket program", program, params, ids, ids, ids, jax.random.PRNGKey(0),
                         split(settings.static, 8).values, model=model, cfg=settings.static, slots=1, mesh=None)
    assert exported.nr_devices == 8


def test_the_sequence_sharded_encoder_lowers_on_eight_devices():
    mesh = AbstractMesh((1, 1, 8, 1), shd.MESH_AXES)
    model = model_for(CONFIG)
    n = sequence.length_unit(CONFIG, 8)
    tokens = jax.ShapeDtypeStruct((1, n), jnp.int32, sharding=NamedSharding(mesh, sequence.TOKENS))
    program = sequence.encode_program(model, mesh, 1)
    with jax.sharding.use_abstract_mesh(mesh):
        exported = lower("the sequence-sharded encoder", program, _abstract_params(model), tokens,
                         {"attention_mask": tokens, "global_attention_mask": tokens})
    assert exported.nr_devices == 8
    assert "collective_permute" in exported.mlir_module()  # the neighbours' blocks cross devices


def test_the_checker_refuses_a_host_callback_and_float64():
    x = jax.ShapeDtypeStruct((4,), jnp.float32)

    def printed(v):
        jax.debug.print("{}", v)
        return v * 2
    with pytest.raises(LoweringError, match=r"^planted: a host callback \(debug_print, at .*test_lowering.py"):
        lower("planted", jax.jit(printed), x)
    called = jax.jit(lambda v: jax.pure_callback(lambda a: a, jax.ShapeDtypeStruct((4,), jnp.float32), v))
    with pytest.raises(LoweringError, match=r"^planted: a host callback \(pure_callback"):
        lower("planted", called, x)
    with jax.enable_x64(True):
        wide = jax.jit(lambda v: (v.astype(jnp.float64) * 3).astype(jnp.float32))
        with pytest.raises(LoweringError, match=r"^planted: float64 in the lowered module .*f64"):
            lower("planted", wide, x)
    assert lower("plain", jax.jit(lambda v: v * 3), x).platforms == ("tpu", "cuda")
