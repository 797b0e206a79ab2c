"""Half-precision compute (float16, bfloat16). Oracles: the float32 model on the same weights; and what
holds whatever the dtype: scores, softmax and LayerNorm statistics in float32, masks that replace
scores (a fully masked row attends uniformly) rather than add finfo.min twice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from led_flax import LEDConfig, init_params, model_for
from led_flax.decoding.generation import generate
from led_flax.model.layers import layer_norm
from led_flax.summarization.batch import SummarizeOptions

CFG = LEDConfig(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, attention_window=[4, 8],
                max_encoder_position_embeddings=80, max_decoder_position_embeddings=24, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, init_std=0.1, dropout=0.0)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, (2, 21))
    am = np.ones_like(ids)
    am[1, 13:] = 0  # padding across a block boundary
    ids[1, 13:] = CFG.pad_token_id
    glob = np.zeros_like(ids)
    glob[0, [0, 9]] = 1
    glob[1, 0] = 1
    labels = rng.integers(3, CFG.vocab_size, (2, 7))
    labels[1, 5:] = -100
    return dict(input_ids=ids, attention_mask=am, global_attention_mask=glob, labels=labels)


@pytest.fixture(scope="module")
def params():
    return init_params(model_for(CFG), jax.random.PRNGKey(0))


def _loss_and_grads(dtype, params):
    model = model_for(CFG, dtype=dtype)

    def loss(p):
        out = model.apply({"params": p}, **_batch(), num_global_slots=2)
        return out.loss, out.logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def test_float16_outputs_and_gradients_are_finite_with_padding_and_global_tokens(params):
    (loss32, logits32), grads32 = _loss_and_grads(jnp.float32, params)
    (loss16, logits16), grads16 = _loss_and_grads(jnp.float16, params)
    assert logits16.dtype == jnp.float32  # logits leave the model in float32
    assert np.isfinite(loss16) and np.isfinite(logits16).all()
    leaves16, leaves32 = jax.tree_util.tree_leaves(grads16), jax.tree_util.tree_leaves(grads32)
    assert all(np.isfinite(g).all() for g in leaves16)
    assert abs(float(loss16) - float(loss32)) < 1e-2 * abs(float(loss32))
    assert _rel(logits16, logits32) < 1e-2
    flat = lambda leaves: np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in leaves])
    assert _rel(flat(leaves16), flat(leaves32)) < 5e-2


def test_scores_and_softmax_stay_float32(params):
    dtype = jnp.float16
    model = model_for(CFG, dtype=dtype)
    batch = _batch()
    del batch["labels"]
    out = jax.jit(lambda p: model.apply({"params": p}, **batch, decoder_input_ids=batch["input_ids"][:, :6],
                                        output_attentions=True, output_hidden_states=True))(params)
    assert out.decoder_hidden_states[-1].dtype == dtype  # the model computes in `dtype` ...
    for probs in (out.encoder_attentions + out.encoder_global_attentions + out.decoder_attentions
                  + out.cross_attentions):  # ... and every attention's probabilities in float32
        assert probs.dtype == jnp.float32
        assert np.isfinite(probs).all()


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_layer_norm_statistics_stay_float32(dtype):
    x = jnp.asarray(np.random.default_rng(1).normal(400.0, 300.0, (3, 32)), dtype)  # sum of squares > 65,504
    norm = layer_norm(dtype, jnp.float32)
    variables = norm.init(jax.random.PRNGKey(0), x)
    got = norm.apply(variables, x)
    expected = layer_norm(jnp.float32, jnp.float32).apply(variables, x.astype(jnp.float32))
    assert got.dtype == dtype and np.isfinite(np.asarray(got, np.float32)).all()
    assert _rel(got, expected) < 1e-2


def test_masks_replace_scores_so_a_fully_masked_row_attends_uniformly(params):
    """Two added finfo.min masks would overflow to -inf and give NaN; replaced scores give a fully
    masked row a uniform softmax, finite outputs and finite gradients."""
    model = model_for(CFG, dtype=jnp.float16)
    batch = _batch()
    enc = jax.jit(lambda p: model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                                        batch["global_attention_mask"], method="encode").last_hidden_state)(params)
    cross_mask = np.ones((2, 21), np.int32)
    cross_mask[1] = 0  # example 1 may attend to no encoder position
    dec_mask = np.ones((2, 6), np.int32)
    dec_mask[1, :] = 0  # nor to any decoder position

    def run(enc):
        return model.apply({"params": params}, batch["input_ids"][:, :6], enc, cross_mask,
                           decoder_attention_mask=dec_mask, output_attentions=True, method="decode")

    out = jax.jit(run)(enc)
    np.testing.assert_allclose(out.cross_attentions[0][1], 1 / 21, rtol=1e-6)
    assert np.isfinite(out.logits).all()
    grad = jax.jit(jax.grad(lambda e: run(e).logits.sum()))(enc)
    assert np.isfinite(np.asarray(grad, np.float32)).all()


def test_generate_in_half_precision_follows_float32(params):
    batch = _batch()
    args = (batch["input_ids"], batch["attention_mask"], batch["global_attention_mask"])
    ours = {dtype: generate(model_for(CFG, dtype=dtype), params, *args, num_beams=2, max_length=8)
            for dtype in (jnp.float32, jnp.float16)}
    for out in ours.values():
        assert out.sequences.shape[0] == 2 and np.isfinite(out.scores).all()
    assert _rel(ours[jnp.float16].scores, ours[jnp.float32].scores) < 2e-2


def test_summarize_options_name_the_compute_dtype_apart_from_the_storage_dtype():
    from led_flax.cli import build_parser
    from led_flax.model.quantize import QuantizeSpec
    args = build_parser().parse_args(["summarize", "--model", "m", "--compute-dtype", "float16", "--quantize", "nf4",
                                      "--group-size", "32", "--cross-cache", "int8"])
    assert (args.compute_dtype, args.quantize, args.group_size, args.cross_cache) == ("float16", "nf4", 32, "int8")
    options = SummarizeOptions(quantize="int4", compute_dtype="bfloat16")
    assert options.quantize == QuantizeSpec("int4")
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        SummarizeOptions(compute_dtype="float64")
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        SummarizeOptions(quantize="int2")
    with pytest.raises(ValueError, match="cross_cache must be one of"):
        SummarizeOptions(cross_cache="fp8")
