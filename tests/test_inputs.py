"""Every mask, id, label and count is read as the reference reads it, or refused with an error that names
it (oracle: transformers' LED on the same checkpoint, or the exact error)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from led_flax import convert
from led_flax import ConfigError, LEDConfig, model_for
from led_flax.model.attention import count_global_slots

from conftest import VOCAB, make_reference, rel_err

F32_TOL = 1e-5


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    ref = make_reference("conditional_generation", d, seed=11)
    config, params = convert.from_hf(d)
    return ref, model_for(config), params


def _ids(b=2, n=13, seed=0):
    ids = np.random.default_rng(seed).integers(3, VOCAB, (b, n))
    ids[:, -1] = 2
    return ids


@pytest.mark.parametrize("case", ["two_in_attention_mask", "two_beside_a_global_mask", "minus_one_global",
                                  "two_and_global_on_one_token", "global_mask_alone"])
def test_encoder_masks_read_as_the_reference(lm, case):
    ref, model, params = lm
    ids = _ids()
    am = np.ones_like(ids)
    am[1, 10:] = 0
    gm = None
    if case == "two_in_attention_mask":  # Longformer's own way of marking a global token
        am[:, 0] = 2
        am[0, 5] = 2
    elif case == "two_beside_a_global_mask":
        am[0, 0] = 2
        gm = np.zeros_like(ids)
        gm[:, 3] = 1
    elif case == "minus_one_global":  # 4.x padded global masks with -1: on a real token it masks it
        gm = np.zeros_like(ids)
        gm[:, 0] = 1
        gm[0, 4] = -1
    elif case == "two_and_global_on_one_token":
        am[:, 2] = 2
        gm = np.zeros_like(ids)
        gm[:, 2] = 1
    else:
        am = None
        gm = np.zeros_like(ids)
        gm[:, [0, 7]] = 1
    dec = _ids(2, 5, seed=1)
    slots = count_global_slots(gm, am)  # what an eager call counts from the masks (a 2 in am included)
    ours = jax.jit(lambda p, am, gm: model.apply({"params": p}, ids, attention_mask=am, global_attention_mask=gm,
                                                 decoder_input_ids=dec, num_global_slots=slots))(params, am, gm)
    kw = {k: torch.tensor(v) for k, v in (("attention_mask", am), ("global_attention_mask", gm)) if v is not None}
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec), **kw)
    assert rel_err(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state) <= F32_TOL, case
    assert rel_err(ours.logits, theirs.logits) <= F32_TOL, case


def test_a_two_counts_as_a_global_slot():
    am = np.ones((2, 9), np.int64)
    am[0, [0, 4, 6]] = 2
    assert count_global_slots(None, am) == 4  # 3 global tokens, rounded up to a power of two
    gm = np.zeros_like(am)
    gm[1, [1, 2]] = 1
    assert count_global_slots(gm, am) == 4
    with pytest.raises(ValueError, match="3 global tokens but num_global_slots is 2"):
        count_global_slots(gm, am, num_slots=2)


@pytest.mark.parametrize("bad", [2, -1, 5])
def test_decoder_mask_values_other_than_0_and_1_are_refused(lm, bad):
    _, model, params = lm
    ids, dec = _ids(), _ids(2, 5, seed=1)
    dam = np.ones_like(dec)
    dam[1, 2] = bad
    with pytest.raises(ValueError, match=rf"decoder_attention_mask holds values other than 0 and 1: \[{bad}\]"):
        model.apply({"params": params}, ids, decoder_input_ids=dec, decoder_attention_mask=dam)


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 7, -1, -5])
def test_labels_neither_ignored_nor_ids_are_refused_naming_labels(lm, bad):
    ref, model, params = lm
    labels = _ids(2, 5, seed=2)
    labels[0, 3] = bad
    with pytest.raises(ValueError, match=rf"labels holds values that are neither -100 \(ignored\) nor a token id "
                                         rf"in \[0, {VOCAB}\): \[{bad}\]"):
        model.apply({"params": params}, _ids(), labels=labels)  # shifted into the decoder input: still `labels`
    with pytest.raises((IndexError, RuntimeError), match="out of (range|bounds)"):  # the reference refuses them too
        ref(input_ids=torch.tensor(_ids()), labels=torch.tensor(labels))


def test_ignored_labels_match_the_reference_loss(lm):
    ref, model, params = lm
    labels = _ids(2, 5, seed=3)
    labels[0, 3:] = -100
    ours = model.apply({"params": params}, _ids(), labels=labels).loss
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(_ids()), labels=torch.tensor(labels)).loss
    assert rel_err(ours, theirs) <= F32_TOL


def test_classification_labels_past_the_classes_are_refused(checkpoints):
    directory, _ = checkpoints["sequence_classification"]
    config, params = convert.from_hf(directory)
    ids = _ids()
    with pytest.raises(ValueError, match=r"labels holds values .* in \[0, 3\): \[3\]"):
        model_for(config).apply({"params": params}, ids, labels=np.array([1, 3]))


def test_traced_masks_with_more_globals_than_slots_give_nan_rows(lm):
    _, model, params = lm
    ids = _ids()
    gm = np.zeros_like(ids)
    gm[0, [0, 5]] = 1  # two global tokens in row 0, one in row 1: row 0 overflows one slot
    gm[1, 0] = 1
    logits = jax.jit(lambda p, i, g: model.apply({"params": p}, i, global_attention_mask=g, decoder_input_ids=i[:, :4],
                                                 num_global_slots=1).logits)(params, ids, gm)
    enc = jax.jit(lambda p, i, g: model.apply({"params": p}, i, global_attention_mask=g, num_global_slots=1,
                                              method="encode").last_hidden_state)(params, ids, gm)
    assert np.isnan(np.asarray(logits[0])).all() and np.isnan(np.asarray(enc[0])).all()
    # the row within its slots is exactly what an eager call gives
    eager = model.apply({"params": params}, ids[1:], global_attention_mask=gm[1:], decoder_input_ids=ids[1:, :4],
                        num_global_slots=1).logits
    np.testing.assert_allclose(np.asarray(logits[1]), np.asarray(eager[0]), rtol=1e-5, atol=1e-6)
    # eager calls, which can count, raise instead
    with pytest.raises(ValueError, match="raise num_global_slots to at least 2"):
        model.apply({"params": params}, ids, global_attention_mask=gm, num_global_slots=1, method="encode")


@pytest.mark.parametrize("source", ["labels", "input_ids", "decoder_input_ids"])
def test_a_decoder_input_past_the_positions_names_where_it_came_from(lm, checkpoints, source):
    _, model, params = lm
    long = _ids(1, 30)  # the tiny decoder has 24 positions
    if source == "labels":
        call = dict(labels=long)
    elif source == "input_ids":  # the bare model shifts the input when no decoder input is given
        directory, _ = checkpoints["base"]
        config, params = convert.from_hf(directory)
        model = model_for(config)
        call = {}
    else:
        call = dict(decoder_input_ids=long)
    with pytest.raises(ValueError, match=rf"the decoder input has 30 tokens but the decoder has 24 positions; "
                                         rf"shorten {source}"):
        model.apply({"params": params}, long, **call)


def test_sizes_past_int32_are_a_config_error():
    with pytest.raises(ConfigError, match=r"vocab_size: 1000000000000 does not fit the int32"):
        LEDConfig(vocab_size=10**12)


# ---------------------------------------------------------------------------------------------- untied
@pytest.mark.parametrize("head", ["conditional_generation", "base"])
def test_untied_embeddings_match_the_reference_and_round_trip_bit_for_bit(tmp_path, head):
    ref = make_reference(head, tmp_path / "src", seed=12, tie_word_embeddings=False)
    config, params = convert.from_hf(tmp_path / "src")
    body = params.get("led", params)
    assert "embed_tokens" in body["encoder"] and "embed_tokens" in body["decoder"]
    assert (head == "conditional_generation") == ("lm_head" in params)
    ids, dec = _ids(), _ids(2, 5, seed=1)
    labels = _ids(2, 5, seed=4)
    model = model_for(config)
    extra = {"labels": labels} if head == "conditional_generation" else {"decoder_input_ids": dec}

    def loss(p):
        out = model.apply({"params": p}, ids, **extra)
        return out.loss if head == "conditional_generation" else out.last_hidden_state.sum()
    ours, grads = jax.jit(jax.value_and_grad(loss))(params)
    t_extra = {k: torch.tensor(v) for k, v in extra.items()}
    out = ref(input_ids=torch.tensor(ids), **t_extra)
    theirs = out.loss if head == "conditional_generation" else out.last_hidden_state.sum()
    theirs.backward()
    assert rel_err(ours, theirs) <= F32_TOL
    flat = convert.to_state_dict(config, jax.device_get(grads))
    for name, p in ref.named_parameters():
        if p.grad is not None and ("embed_tokens" in name or "lm_head" in name):
            assert rel_err(flat[name], p.grad) <= 1e-4, name  # each of the separate matrices trains
    convert.to_hf(config, params, tmp_path / "back")
    from safetensors.numpy import load_file
    a, b = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    cls = transformers.LEDForConditionalGeneration if head == "conditional_generation" else transformers.LEDModel
    _, info = cls.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_untied_embeddings_shard_and_decay_like_the_shared_table():
    from led_flax import init_params
    from led_flax.parallel import sharding
    from led_flax.train import step as step_lib
    from led_flax.train.config import OptimizerConfig
    config = LEDConfig(vocab_size=96, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8, attention_window=4,
                       max_encoder_position_embeddings=16, max_decoder_position_embeddings=8,
                       tie_word_embeddings=False)
    params = jax.eval_shape(lambda: init_params(model_for(config)))
    axes = sharding.logical_axes(params)
    assert axes["led"]["encoder"]["embed_tokens"]["embedding"] == ("vocab", "embed")
    assert axes["led"]["decoder"]["embed_tokens"]["embedding"] == ("vocab", "embed")
    assert axes["lm_head"]["kernel"] == ("embed", "vocab")
    tx = step_lib.optimizer(OptimizerConfig(learning_rate=1.0, weight_decay=0.5, max_grad_norm=0.0), 10)
    p = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), params)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, p), tx.init(p), p)
    for where in (updates["led"]["encoder"]["embed_tokens"]["embedding"], updates["lm_head"]["kernel"]):
        assert float(jnp.abs(where).max()) > 0  # zero gradient, so only weight decay moves them
