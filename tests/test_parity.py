"""Oracle: transformers' PyTorch LED. Same weights and inputs -> the same outputs, losses and gradients.

Tolerance: the norm-relative error max|ours - ref| / max|ref| must be <= 1e-5 in float32 (stated per
assertion below). Gradients: float64 on both sides to 1e-9 where the reference's float64 backward is
finite, float32 to 1e-4 otherwise: transformers' LED itself returns NaN gradients in float64 for some
padded batches (seen with 5.24.0 for three of the four batches below; the float32 ones are finite).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from led_flax import convert
from led_flax import model_for
from led_flax.model.attention import count_global_slots

from conftest import VOCAB, rel_err

F32_TOL = 1e-5
F64_TOL = 1e-9
# float32 gradients of a 2-layer model accumulate more rounding than the forward pass
F32_GRAD_TOL = 1e-4


def batch(case: str, seed: int = 0):
    """Inputs covering the cases the reference handles in its own, easily-missed ways."""
    rng = np.random.default_rng(seed)
    if case == "padded_many_globals":  # lengths 13/9/4 with window 8: not a multiple, padding, 0-3 globals
        b, n, t = 3, 13, 6
        am = np.ones((b, n), np.int64)
        am[1, 9:] = 0
        am[2, 4:] = 0
        ga = np.zeros((b, n), np.int64)
        ga[0, [0, 5, 12]] = 1  # includes the last real token
        ga[1, [7, 8]] = 1  # the last real token, next to padding
        dam = np.ones((b, t), np.int64)
        dam[2, 4:] = 0  # decoder padding
    elif case == "short_no_global":  # shorter than the window, no global token at all
        b, n, t = 2, 3, 4
        am, ga, dam = np.ones((b, n), np.int64), np.zeros((b, n), np.int64), None
    elif case == "one_global":
        b, n, t = 2, 20, 5
        am = np.ones((b, n), np.int64)
        am[0, 17:] = 0
        ga = np.zeros((b, n), np.int64)
        ga[:, 0] = 1
        dam = None
    elif case == "mostly_global":  # many global tokens, some adjacent, one row all global
        b, n, t = 2, 10, 3
        am = np.ones((b, n), np.int64)
        am[1, 6:] = 0
        ga = np.zeros((b, n), np.int64)
        ga[0, [0, 1, 2, 4, 6, 7, 9]] = 1
        ga[1, :6] = 1
        dam = None
    else:
        raise ValueError(case)
    ids = rng.integers(3, VOCAB, (b, n))
    ids[:, -1] = 2  # an eos in every row, for the classification head's pooling
    ids = np.where(am > 0, ids, 1)
    # keep one eos per row at its last real position
    last = am.sum(1) - 1
    ids[ids == 2] = 5
    ids[np.arange(b), last] = 2
    dec = rng.integers(3, VOCAB, (b, t))
    return dict(input_ids=ids, attention_mask=am, global_attention_mask=ga, decoder_input_ids=dec,
                decoder_attention_mask=dam)


def torch_inputs(inputs):
    return {k: torch.tensor(v) for k, v in inputs.items() if v is not None}


def compare_seq2seq(ours, ref, where: str):
    pairs = [("encoder_last_hidden_state", ours.encoder_last_hidden_state, ref.encoder_last_hidden_state)]
    for name in ("encoder_hidden_states", "encoder_attentions", "encoder_global_attentions",
                 "decoder_hidden_states", "decoder_attentions", "cross_attentions"):
        a, r = getattr(ours, name), getattr(ref, name)
        assert (a is None) == (r is None), f"{where}: {name} is {a is None} here, {r is None} in the reference"
        for i, (x, y) in enumerate(zip(a or (), r or ())):
            pairs.append((f"{name}[{i}]", x, y))
    for name, x, y in pairs:
        assert rel_err(x, y) <= F32_TOL, f"{where}: {name} differs by {rel_err(x, y):.2e} (tolerance {F32_TOL})"


CASES = ["padded_many_globals", "short_no_global", "one_global", "mostly_global"]
SEEDS = {"base": 1, "conditional_generation": 2, "question_answering": 3, "sequence_classification": 4}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("head", ["base", "conditional_generation", "question_answering", "sequence_classification"])
def test_forward_matches_reference(checkpoints, head, case):
    directory, ref_model = checkpoints[head]
    config, params = convert.from_hf(directory)
    model = model_for(config)
    inputs = batch(case, seed=SEEDS[head] * 10 + CASES.index(case))  # fixed per (head, case): reproducible
    slots = int((inputs["global_attention_mask"] * inputs["attention_mask"]).sum(1).max())
    kw = dict(output_attentions=True, output_hidden_states=True)
    rng = np.random.default_rng(1)
    t = inputs["decoder_input_ids"].shape[1]

    extra_ours, extra_ref = {}, {}
    if head == "conditional_generation":
        labels = rng.integers(0, VOCAB, (len(inputs["input_ids"]), t))
        labels[0, -2:] = -100
        extra_ours = extra_ref = {"labels": labels}
    elif head == "question_answering":
        b = len(inputs["input_ids"])
        start = np.ones(b, np.int64)
        start[-1] = t + 3  # past the decoder length: clamped and ignored, as in the reference
        extra_ours = extra_ref = {"start_positions": start, "end_positions": np.full(b, 2)}
    elif head == "sequence_classification":
        # the head pools the decoder at the input's eos: the decoder reads the shifted input, as in 4.x
        inputs["decoder_input_ids"] = inputs["decoder_attention_mask"] = None
        extra_ours = extra_ref = {"labels": rng.integers(0, 3, len(inputs["input_ids"]))}

    with torch.no_grad():
        ref_in = {**torch_inputs(inputs), **{k: torch.tensor(v) for k, v in extra_ref.items()}}
        if head == "sequence_classification":
            ref_out, ref_logits, ref_loss = ref_model(**ref_in, **kw)
        else:
            ref_out = ref_model(**ref_in, **kw)
    # one jitted program (the inputs, concrete, are checked while it is traced): op by op, the base
    # model's cases took 6 to 9 s each
    ours = jax.jit(lambda p: model.apply({"params": p}, **inputs, **extra_ours, num_global_slots=slots,
                                         **kw))(params)
    where = f"{head}/{case}"
    compare_seq2seq(ours, ref_out, where)
    ref_last = ref_out.decoder_hidden_states[-1]  # every head's output carries the decoder states
    assert rel_err(ours.last_hidden_state, ref_last) <= F32_TOL, where
    if head == "conditional_generation":
        assert rel_err(ours.logits, ref_out.logits) <= F32_TOL, where
        assert rel_err(ours.loss, ref_out.loss) <= F32_TOL, where
    elif head == "question_answering":
        assert rel_err(ours.start_logits, ref_out.start_logits) <= F32_TOL, where
        assert rel_err(ours.end_logits, ref_out.end_logits) <= F32_TOL, where
        assert rel_err(ours.loss, ref_out.loss) <= F32_TOL, where
    elif head == "sequence_classification":
        assert rel_err(ours.logits, ref_logits) <= F32_TOL, where
        assert rel_err(ours.loss, ref_loss) <= F32_TOL, where


def test_default_global_slots_give_the_same_result(checkpoints):
    """Power-of-two slots (here 4 for a max of 3 globals) change nothing but the padding of the slots."""
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    model = model_for(config)
    inputs = batch("padded_many_globals")
    assert count_global_slots(inputs["global_attention_mask"], inputs["attention_mask"]) == 4
    exact = jax.jit(lambda p: model.apply({"params": p}, **inputs, num_global_slots=3).logits)(params)
    default = jax.jit(lambda p: model.apply({"params": p}, **inputs).logits)(params)  # slots counted while traced
    assert rel_err(default, exact) <= F32_TOL  # only the float32 summation order differs


def test_inputs_embeds_match_reference(checkpoints):
    directory, ref_model = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    inputs = batch("padded_many_globals", seed=3)
    embeds = np.random.default_rng(0).normal(size=inputs["input_ids"].shape + (config.d_model,)).astype(np.float32)
    dec_embeds = np.random.default_rng(1).normal(size=inputs["decoder_input_ids"].shape + (config.d_model,)).astype(np.float32)
    kw = dict(attention_mask=inputs["attention_mask"], global_attention_mask=inputs["global_attention_mask"])
    with torch.no_grad():
        ref = ref_model(inputs_embeds=torch.tensor(embeds), decoder_inputs_embeds=torch.tensor(dec_embeds),
                        **{k: torch.tensor(v) for k, v in kw.items()})
    ours = model_for(config).apply({"params": params}, inputs_embeds=embeds, decoder_inputs_embeds=dec_embeds, **kw)
    assert rel_err(ours.logits, ref.logits) <= F32_TOL
    assert rel_err(ours.encoder_last_hidden_state, ref.encoder_last_hidden_state) <= F32_TOL


def test_labels_shift_into_decoder_inputs(checkpoints):
    """Without decoder_input_ids the decoder reads the labels shifted right, -100 read as padding."""
    directory, ref_model = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    inputs = batch("one_global")
    labels = np.random.default_rng(5).integers(3, VOCAB, (2, 5))
    labels[1, 2:] = -100
    del inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    with torch.no_grad():
        ref = ref_model(**torch_inputs(inputs), labels=torch.tensor(labels))
    ours = model_for(config).apply({"params": params}, **inputs, labels=labels)
    assert rel_err(ours.logits, ref.logits) <= F32_TOL
    assert rel_err(ours.loss, ref.loss) <= F32_TOL


# ---------------------------------------------------------------------------------------------- gradients
@contextlib.contextmanager
def float64_softmax():
    """The reference runs its Longformer softmax in float32 even in a float64 model
    (`softmax(..., dtype=torch.float32)`); for the float64 oracle, keep float64 there."""
    original = torch.nn.functional.softmax

    def softmax(x, dim=None, _stacklevel=3, dtype=None):
        if x.dtype == torch.float64 and dtype == torch.float32:
            dtype = torch.float64
        return original(x, dim=dim, dtype=dtype)

    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = original


def _grads_match(head, directory, ref_model, loss_ours, loss_ref, float64: bool):
    """Every parameter's gradient against torch autograd: in float64 to F64_TOL, or in float32 to
    F32_GRAD_TOL, both as max|ours - ref| / max|ref| per tensor."""
    config, params = convert.from_hf(directory)
    ref = ref_model.double() if float64 else ref_model
    tol = F64_TOL if float64 else F32_GRAD_TOL
    try:
        ref.zero_grad()
        with float64_softmax() if float64 else contextlib.nullcontext():
            loss_ref(ref).backward()
        ref_grads = {n: p.grad for n, p in ref.named_parameters()}
        with jax.enable_x64(float64):
            dtype = jnp.float64 if float64 else jnp.float32
            cast = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
            model = model_for(config, dtype=dtype, param_dtype=dtype)
            grads = jax.jit(jax.grad(lambda p: loss_ours(model, p)))(cast)
            ours = convert.to_state_dict(config, grads)
        # Each tensor's error is relative to its largest gradient, floored at a fraction of the model's
        # largest (1e-6 in float64, 1e-3 in float32): a key bias has an exactly-zero true gradient
        # (softmax ignores a constant shift of a row), so both sides hold only rounding noise there.
        floor = (1e-6 if float64 else 1e-3) * max(float(g.abs().max()) for g in ref_grads.values() if g is not None)
        for name, g in ref_grads.items():
            assert name in ours, f"{name} has a reference gradient but no parameter here"
            r = np.zeros(ours[name].shape) if g is None else g.double().numpy()
            assert np.isfinite(r).all(), f"the reference's gradient of {name} is not finite"
            scale = max(np.abs(r).max(), floor)
            err = np.abs(ours[name] - r).max() / scale
            assert err <= tol, f"{head}: gradient of {name} differs by {err:.2e} (tolerance {tol})"
        return ours, ref_grads, config
    finally:
        ref_model.float()


@pytest.mark.parametrize("case,float64", [("one_global", True), ("padded_many_globals", False)])
def test_gradients_match_autograd_conditional_generation(checkpoints, case, float64):
    directory, ref_model = checkpoints["conditional_generation"]
    inputs = batch(case, seed=7)
    labels = np.random.default_rng(2).integers(0, VOCAB, inputs["decoder_input_ids"].shape)
    labels[1, -3:] = -100
    del inputs["decoder_input_ids"]

    def loss_ref(m):
        return m(**torch_inputs(inputs), labels=torch.tensor(labels)).loss

    def loss_ours(model, p):
        return model.apply({"params": p}, **inputs, labels=labels).loss

    ours, ref_grads, config = _grads_match("conditional_generation", directory, ref_model, loss_ours, loss_ref,
                                             float64)
    # the reference's buffer gets no gradient, and neither does ours
    assert "final_logits_bias" not in ref_grads
    assert np.all(ours["final_logits_bias"] == 0)


def test_gradients_match_autograd_question_answering(checkpoints):
    directory, ref_model = checkpoints["question_answering"]
    inputs = batch("mostly_global", seed=8)
    sp, ep = np.array([0, 2]), np.array([1, 9])  # 9 is past the decoder length: ignored, as in HF

    def loss_ref(m):
        return m(**torch_inputs(inputs), start_positions=torch.tensor(sp), end_positions=torch.tensor(ep)).loss

    def loss_ours(model, p):
        return model.apply({"params": p}, **inputs, start_positions=sp, end_positions=ep).loss

    _grads_match("question_answering", directory, ref_model, loss_ours, loss_ref, float64=False)


def test_gradients_match_autograd_sequence_classification(checkpoints):
    directory, ref_model = checkpoints["sequence_classification"]
    inputs = batch("one_global", seed=9)
    del inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    labels = np.array([2, 0])

    def loss_ref(m):
        return m(**torch_inputs(inputs), labels=torch.tensor(labels))[2]

    def loss_ours(model, p):
        return model.apply({"params": p}, **inputs, labels=labels).loss

    _grads_match("sequence_classification", directory, ref_model, loss_ours, loss_ref, float64=True)


def test_padding_row_gets_no_gradient_from_lookups(checkpoints):
    """The bare model has no LM head, so the padding row of the embeddings gets exactly zero."""
    directory, ref_model = checkpoints["base"]
    inputs = batch("padded_many_globals", seed=4)  # holds padding ids
    assert (inputs["input_ids"] == 1).any()
    w = np.random.default_rng(0).normal(size=(3, 6, 16))

    def loss_ref(m):
        return (m(**torch_inputs(inputs)).last_hidden_state * torch.tensor(w)).sum()

    def loss_ours(model, p):
        return jnp.sum(model.apply({"params": p}, **inputs).last_hidden_state * w)

    ours, ref_grads, config = _grads_match("base", directory, ref_model, loss_ours, loss_ref, float64=False)
    assert np.all(ours["shared.weight"][config.pad_token_id] == 0)
    assert np.abs(ours["shared.weight"]).sum() > 0


# ---------------------------------------------------------------------------------------------- decoding
def test_cached_decoding_equals_full_decoder_pass(checkpoints):
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    model = model_for(config)
    inputs = batch("padded_many_globals", seed=11)
    enc = model.apply({"params": params}, inputs["input_ids"], inputs["attention_mask"],
                      inputs["global_attention_mask"], method="encode")
    dec_ids = inputs["decoder_input_ids"]
    full = model.apply({"params": params}, dec_ids, enc.last_hidden_state, inputs["attention_mask"],
                       method="decode").logits
    cache = model.apply({"params": params}, enc.last_hidden_state, 10, method="init_cache")
    step = jax.jit(lambda p, ids, c: model.apply({"params": p}, ids, enc.last_hidden_state,
                                                  inputs["attention_mask"], cache=c, method="decode"))
    for i in range(dec_ids.shape[1]):
        out = step(params, dec_ids[:, i:i + 1], cache)
        cache = out.cache
        np.testing.assert_allclose(out.logits[:, 0], full[:, i], rtol=0, atol=2e-5 * np.abs(full).max())
    assert int(cache.index) == dec_ids.shape[1]


def test_out_of_vocabulary_ids_are_a_host_error(checkpoints):
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    inputs = batch("one_global")
    inputs["input_ids"][0, 3] = VOCAB + 5
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model_for(config).apply({"params": params}, **inputs)


def test_more_globals_than_slots_is_an_error_before_tracing(checkpoints):
    directory, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    inputs = batch("mostly_global")
    with pytest.raises(ValueError, match="raise num_global_slots to at least 7"):
        model_for(config).apply({"params": params}, **inputs, num_global_slots=4)
