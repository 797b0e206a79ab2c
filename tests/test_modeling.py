"""Model behaviour beyond parity: initialisation as the reference draws it, dropout through Flax rngs,
gradient checkpointing (oracle: the same model without it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from led_flax import convert
from led_flax.utils.trees import flatten
from led_flax import LEDConfig, LEDForConditionalGeneration, init_params

CFG = LEDConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, attention_window=[4, 6],
                max_encoder_position_embeddings=64, max_decoder_position_embeddings=32, init_std=0.05)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, (2, 19))
    am = np.ones_like(ids)
    am[1, 14:] = 0
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    labels = rng.integers(3, 120, (2, 7))
    return dict(input_ids=ids, attention_mask=am, global_attention_mask=glob, labels=labels)


def test_init_follows_the_reference():
    params = flatten(jax.device_get(init_params(LEDForConditionalGeneration(CFG), jax.random.PRNGKey(1))))
    kernels = np.concatenate([v.ravel() for k, v in params.items() if k.endswith("kernel")])
    assert abs(kernels.std() - CFG.init_std) < 0.002 and abs(kernels.mean()) < 0.002
    for k, v in params.items():
        if k.endswith("bias"):
            assert np.all(v == 0), k  # Linear and LayerNorm biases, final_logits_bias
        elif k.endswith("scale"):
            assert np.all(v == 1), k
    shared = params["led/shared/embedding"]
    assert np.all(shared[CFG.pad_token_id] == 0) and abs(shared.std() - CFG.init_std) < 0.005
    for path in params:  # every path has exactly one conversion rule
        convert.rule_for(path)


def test_dropout_and_layerdrop_follow_the_rng():
    cfg = CFG.replace(dropout=0.3, attention_dropout=0.2, activation_dropout=0.1, encoder_layerdrop=0.3,
                      decoder_layerdrop=0.3)
    model = LEDForConditionalGeneration(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    inputs = _inputs()
    run = lambda **kw: model.apply({"params": params}, **inputs, **kw).logits
    det = jax.jit(run)()
    with_key = jax.jit(lambda key, deterministic: run(deterministic=deterministic, rngs={"dropout": key}),
                       static_argnums=1)
    a, b, c = (with_key(jax.random.PRNGKey(k), False) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))
    assert np.abs(a - det).max() > 1e-3 and np.abs(a - c).max() > 1e-3
    np.testing.assert_array_equal(with_key(jax.random.PRNGKey(3), True), det)  # deterministic ignores it
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: run(deterministic=False))  # no rng given: an error, not a silent no-op


def test_bfloat16_params_and_compute():
    model = LEDForConditionalGeneration(CFG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = init_params(model)
    assert {v.dtype for v in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    out = jax.jit(lambda p: model.apply({"params": p}, **_inputs()))(params)
    assert out.logits.dtype == jnp.float32 and np.isfinite(float(out.loss))


def test_encoder_input_longer_than_positions_is_an_error():
    model = LEDForConditionalGeneration(CFG)
    params = init_params(model)
    with pytest.raises(ValueError, match="truncate"):
        model.apply({"params": params}, np.ones((1, 65), np.int32), decoder_input_ids=np.ones((1, 2), np.int32))


def test_long_inputs_run_the_feed_forward_in_chunks_with_the_same_result(monkeypatch):
    """Past FFN_BYTES_PER_STEP the feed-forward runs a slice of the sequence at a time (lax.map); the
    loss and every gradient are those of the whole-sequence products, also when the chunks do not
    divide the length (24 encoder tokens in chunks of 5, 7 decoder tokens in chunks of 4)."""
    from led_flax.model import layers
    model = LEDForConditionalGeneration(CFG)
    params = init_params(model, jax.random.PRNGKey(0))
    loss = lambda p: model.apply({"params": p}, **_inputs()).loss

    def run():  # (loops in the program, (loss, gradients))
        lowered = jax.jit(jax.value_and_grad(loss)).lower(params)
        return lowered.as_text().count("stablehlo.while"), lowered.compile()(params)

    loops, whole = run()
    monkeypatch.setattr(layers, "FFN_BYTES_PER_STEP", 2 * CFG.encoder_ffn_dim * 4 * 5)  # 5 tokens of batch 2
    chunked_loops, chunked = run()
    # a chunk loop in each scanned run of layers (the encoder's two, windows 4 and 6, and the decoder's),
    # forward and backward
    assert chunked_loops == loops + 6
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6)
    for (path, a), b in zip(flatten(chunked[1]).items(), flatten(whole[1]).values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=path)
