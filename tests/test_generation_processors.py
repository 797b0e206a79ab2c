"""The processors and warpers on the same scores as transformers' own classes (`logits_process.py`),
without a model: random scores and decoder tokens, every step of a decode, greedy and beam rows.

transformers builds its list with `_get_logits_processor` from a GenerationConfig, so the order and
the arguments (min_tokens_to_keep, begin index, encoder ids per beam) are its own. Sampling draws
differ between JAX and torch; what is compared is the warped distribution a draw comes from.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation.logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper, TypicalLogitsWarper)

from conftest import hf_config
from led_flax.decoding.generation import GenerationConfig
from led_flax.decoding.processors import process
from led_flax.decoding.settings import split
from led_flax.decoding.warpers import epsilon_filter, eta_filter, top_k_filter, top_p_filter, typical_filter

V, EOS, L = 40, 2, 12


def _assert_same_scores(ours, ref, what):
    ours, ref = np.asarray(ours), np.asarray(ref)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=f"{what}: filtered tokens")
    np.testing.assert_allclose(ours[~np.isneginf(ref)], ref[~np.isneginf(ref)], rtol=1e-6, atol=1e-6, err_msg=what)


def _reference_list(settings, encoder_ids, num_beams):
    """transformers' processor list for `settings`, built by its own `_get_logits_processor`."""
    gc = transformers.GenerationConfig(eos_token_id=EOS, max_length=L, num_beams=num_beams, **settings)
    gc._eos_token_tensor = torch.tensor([EOS])
    model = transformers.LEDForConditionalGeneration(hf_config(vocab_size=V))
    return model._get_logits_processor(generation_config=gc, input_ids_seq_length=1,
                                       encoder_input_ids=torch.tensor(encoder_ids), device="cpu", model_kwargs={})


SETTINGS = [
    pytest.param(dict(encoder_repetition_penalty=1.7, repetition_penalty=1.3, no_repeat_ngram_size=2,
                      encoder_no_repeat_ngram_size=2, bad_words_ids=[[5], [6, 7], [8, 9, 10], [EOS]], min_length=5,
                      min_new_tokens=3, exponential_decay_length_penalty=(2, 1.3), suppress_tokens=[11],
                      begin_suppress_tokens=[12], renormalize_logits=True), id="every-processor"),
    pytest.param(dict(encoder_repetition_penalty=0.6, encoder_no_repeat_ngram_size=3, forced_bos_token_id=4,
                      begin_suppress_tokens=[13, 14], exponential_decay_length_penalty=(0, 0.8),
                      forced_eos_token_id=EOS), id="forced-tokens"),
    pytest.param(dict(encoder_no_repeat_ngram_size=1, bad_words_ids=[[3, 4, 5, 6]]), id="unigrams-and-4-grams"),
    pytest.param(dict(do_sample=True, temperature=0.8, top_k=10, top_p=0.9, typical_p=0.8, epsilon_cutoff=0.01,
                      eta_cutoff=0.02, renormalize_logits=True), id="every-warper"),
    pytest.param(dict(do_sample=True, top_k=0, typical_p=0.5, encoder_no_repeat_ngram_size=2, suppress_tokens=[5, 6]),
                 id="typical"),
    pytest.param(dict(do_sample=True, top_k=0, eta_cutoff=0.3), id="eta"),
    pytest.param(dict(do_sample=True, top_k=0, epsilon_cutoff=0.2), id="epsilon"),
]


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("settings", SETTINGS)
def test_processor_list_matches_transformers(settings, num_beams):
    """Every step of a decode (cur_len 1 .. L-1) on random scores; decoder tokens drawn from a few ids
    so that n-grams repeat, and encoder ids that share them, padding included."""
    rng = np.random.default_rng(len(settings) + num_beams)
    b, n = 2, 9
    encoder_ids = rng.integers(3, 12, (b, n))
    encoder_ids[1, 6:] = 1  # padding, which transformers reads like any token
    seqs = rng.integers(3, 12, (b * num_beams, L))
    seqs[:, 0] = EOS  # the decoder start token
    seqs[0, 1:4] = [6, 7, 6]  # bad word (6, 7) can complete at cur_len 4
    cfg = GenerationConfig(eos_token_id=EOS, max_length=L, num_beams=num_beams, **settings)
    keep = 2 if num_beams > 1 else 1  # transformers' min_tokens_to_keep: eos ids + 1 with beams
    static, values = split(cfg, b)  # as generate runs them: the switches static, the numbers traced
    ours_fn = jax.jit(lambda s, q, c, vals: process(s, q, c, static, vals, jnp.asarray(encoder_ids, jnp.int32), keep))
    ref_list = _reference_list(settings, encoder_ids, num_beams)
    for cur_len in range(1, L):
        scores = (rng.standard_normal((b * num_beams, V)) * 3).astype(np.float32)
        ref = ref_list(torch.tensor(seqs[:, :cur_len]), torch.tensor(scores)).numpy()
        ours = ours_fn(jnp.asarray(scores), jnp.asarray(seqs, jnp.int32), jnp.int32(cur_len), values)
        _assert_same_scores(ours, ref, f"{settings} at cur_len {cur_len}")


ROWS = [  # one batch, three requests' numbers: each row against transformers' list built from its own
    dict(temperature=0.7, top_p=0.9, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.02, repetition_penalty=1.0,
         encoder_repetition_penalty=1.7, factor=1.3),
    dict(temperature=1.0, top_p=1.0, typical_p=0.8, epsilon_cutoff=0.01, eta_cutoff=0.0, repetition_penalty=1.3,
         encoder_repetition_penalty=1.0, factor=0.8),
    dict(temperature=1.3, top_p=0.6, typical_p=0.95, epsilon_cutoff=0.02, eta_cutoff=0.0, repetition_penalty=2.0,
         encoder_repetition_penalty=0.6, factor=1.0),
]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_each_row_is_processed_and_warped_with_its_own_values(num_beams):
    """The traced numbers per row (a neutral value in some rows: that row is as without the setting),
    every step of a decode, each row's scores equal to transformers' list at that row's values."""
    rng = np.random.default_rng(7 + num_beams)
    b, n = len(ROWS), 9
    encoder_ids = rng.integers(3, 12, (b, n))
    seqs = rng.integers(3, 12, (b * num_beams, L))
    seqs[:, 0] = EOS
    common = dict(do_sample=True, top_k=10)
    per_row = {k: tuple(r[k] for r in ROWS) for k in ROWS[0] if k != "factor"}
    cfg = GenerationConfig(eos_token_id=EOS, max_length=L, num_beams=num_beams, **common, **per_row,
                           exponential_decay_length_penalty=(2, tuple(r["factor"] for r in ROWS)))
    static, values = split(cfg, b)
    keep = 2 if num_beams > 1 else 1
    ours_fn = jax.jit(lambda s, q, c, vals: process(s, q, c, static, vals, jnp.asarray(encoder_ids, jnp.int32), keep))
    ref_lists = [_reference_list({**common, **{k: v for k, v in row.items() if k != "factor"},
                                  "exponential_decay_length_penalty": (2, row["factor"])},
                                 encoder_ids[r:r + 1], num_beams) for r, row in enumerate(ROWS)]
    for cur_len in range(1, L):
        scores = (rng.standard_normal((b * num_beams, V)) * 3).astype(np.float32)
        ours = np.asarray(ours_fn(jnp.asarray(scores), jnp.asarray(seqs, jnp.int32), jnp.int32(cur_len), values))
        for r, ref_list in enumerate(ref_lists):
            rows = slice(r * num_beams, (r + 1) * num_beams)
            ref = ref_list(torch.tensor(seqs[rows, :cur_len]), torch.tensor(scores[rows])).numpy()
            _assert_same_scores(ours[rows], ref, f"row {r} ({ROWS[r]}) at cur_len {cur_len}")


def test_settings_that_are_off_add_nothing_to_the_program():
    scores, seqs, enc = jnp.zeros((3, V)), jnp.zeros((3, L), jnp.int32), jnp.zeros((3, 5), jnp.int32)
    off = GenerationConfig.from_hf({
        "encoder_no_repeat_ngram_size": 0, "encoder_repetition_penalty": 1.0, "bad_words_ids": None,
        "suppress_tokens": None, "begin_suppress_tokens": None, "exponential_decay_length_penalty": None,
        "renormalize_logits": False, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
        "num_beam_groups": 1, "diversity_penalty": 0.0, "do_sample": True, "top_k": 0})
    assert off == GenerationConfig(do_sample=True, top_k=0) and hash(off) == hash(GenerationConfig(do_sample=True,
                                                                                                      top_k=0))
    values = split(off, 3).values
    jaxpr = jax.make_jaxpr(lambda s, c, vals: process(s, seqs, c, off, vals, enc, 1))(scores, jnp.int32(3), values)
    assert not jaxpr.eqns, f"settings that are off traced {len(jaxpr.eqns)} operations"


def _logits(kind, rng, dtype):
    x = rng.standard_normal((6, 50)) * rng.uniform(0.5, 4)
    if kind == "ties":  # many exactly equal scores
        x = np.round(x)
    elif kind == "filtered":  # scores an earlier processor set to -inf
        x[:, :20] = -np.inf
    elif kind == "peaked":  # one token holds almost all the mass, and a uniform row (of 49: no cumulative
        x[:, 7] += 30      # probability lands exactly on top-p's threshold, where the summation order decides)
        x[-1] = 0.0
        x[-1, 0] = -np.inf
    return x.astype(dtype)


WARPERS = [
    ("typical", typical_filter, lambda p, k: TypicalLogitsWarper(p, min_tokens_to_keep=k), (0.2, 0.5, 0.95)),
    ("epsilon", epsilon_filter, lambda p, k: EpsilonLogitsWarper(p, min_tokens_to_keep=k), (3e-4, 0.02, 0.2)),
    ("eta", eta_filter, lambda p, k: EtaLogitsWarper(p, min_tokens_to_keep=k), (3e-4, 0.02, 0.2)),
    ("top_p", top_p_filter, lambda p, k: TopPLogitsWarper(p, min_tokens_to_keep=k), (0.3, 0.9)),
    ("top_k", top_k_filter, lambda p, k: TopKLogitsWarper(p, min_tokens_to_keep=k), (1, 5)),
]


@pytest.mark.parametrize("kind", ["plain", "ties", "filtered", "peaked"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ours,reference,values", WARPERS, ids=[w[0] for w in WARPERS])
def test_warpers_match_transformers(name, ours, reference, values, kind, dtype):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == np.float64):
        for trial in range(4):
            x = _logits(kind, rng, dtype)
            for value in values:
                for keep in (1, 2, 5):
                    ref = reference(value, keep)(None, torch.tensor(x)).numpy()
                    got = np.asarray(ours(jnp.asarray(x), value, keep))
                    assert got.dtype == dtype
                    what = f"{name}={value}, min_tokens_to_keep={keep}, {kind}, trial {trial}"
                    assert (~np.isneginf(got)).sum(-1).min() >= min(keep, (~np.isneginf(x)).sum(-1).min()), what
                    if name in ("typical", "top_p") and kind in ("ties", "peaked"):  # peaked has a uniform row
                        # torch's sort is unstable past 16 entries: which of several exactly tied tokens
                        # a cut through them keeps (top-p's cumulative sum, typical's min_tokens_to_keep)
                        # is arbitrary there. The warped distribution is the same
                        got, ref = np.sort(got, axis=-1), np.sort(ref, axis=-1)
                    np.testing.assert_array_equal(got, ref, err_msg=what)
