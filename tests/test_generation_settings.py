"""The generation settings that released summarization checkpoints carry, against transformers'
`generate` on the trained checkpoint of generation_helpers: ids and scores, each setting on with a
value that changes the output (asserted), in greedy and beam search; read from a checkpoint's
generation_config.json as transformers reads it; and beam sampling's scores.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TypicalLogitsWarper)

from led_flax import convert
from generation_helpers import EOS, assert_same, both_with_scores, differs, inputs, trained_checkpoint
from led_flax import model_for
from led_flax.decoding.generation import generate


@pytest.fixture(scope="module")
def trained(shared_dir):
    return trained_checkpoint(shared_dir)


_RUNS: dict[str, tuple] = {}


def _run(trained, **settings):
    """both_with_scores, once per distinct settings in this module (the baselines repeat)."""
    key = json.dumps(settings, sort_keys=True)
    if key not in _RUNS:
        _RUNS[key] = both_with_scores(trained, **settings)
    return _RUNS[key]


def _check(trained, settings, keys):
    """Ids and scores equal transformers'; and the settings `keys` (a name or a tuple) change the ids."""
    ref, ref_scores, ours, scores = _run(trained, **settings)
    assert_same(ref, ours, f"{settings}")
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5, err_msg=f"scores with {settings}")
    without = {k: v for k, v in settings.items() if k not in ((keys,) if isinstance(keys, str) else keys)}
    assert differs(ours, _run(trained, **without)[2]), f"{keys} changed nothing in {settings}"


GREEDY = dict(max_length=20)


@pytest.mark.parametrize("settings,key", [
    (dict(encoder_repetition_penalty=3.0), "encoder_repetition_penalty"),  # favours the input's tokens
    (dict(encoder_no_repeat_ngram_size=1), "encoder_no_repeat_ngram_size"),
    (dict(bad_words_ids=[[11, 11], [3, 16], [EOS]]), "bad_words_ids"),  # n-grams; a lone eos is not banned
    (dict(suppress_tokens=[3, 5]), "suppress_tokens"),
    (dict(begin_suppress_tokens=[3]), "begin_suppress_tokens"),
    (dict(exponential_decay_length_penalty=(3, 1.5)), "exponential_decay_length_penalty"),
], ids=lambda x: json.dumps(x) if isinstance(x, dict) else None)
def test_greedy_setting_matches_and_matters(trained, settings, key):
    # (begin_suppress_tokens with forced_bos_token_id, which starts one later, is in test_generation_processors)
    _check(trained, {**GREEDY, **settings}, key)


BEAM = dict(num_beams=4, max_length=20)
MODEL_CARD = dict(min_length=8, no_repeat_ngram_size=3, encoder_no_repeat_ngram_size=3, repetition_penalty=3.5,
                  early_stopping=True, length_penalty=0.8)


@pytest.mark.parametrize("settings,key", [
    (dict(encoder_no_repeat_ngram_size=2), "encoder_no_repeat_ngram_size"),
    (dict(encoder_repetition_penalty=0.2), "encoder_repetition_penalty"),  # disfavours the input's tokens
    (dict(bad_words_ids=[[8, 9], [4, 22, 10]]), "bad_words_ids"),
    (dict(begin_suppress_tokens=[4]), "begin_suppress_tokens"),
    (dict(exponential_decay_length_penalty=(2, 2.0)), "exponential_decay_length_penalty"),
    # renormalizing after a processor shifts each beam's log-probs by its own constant
    (dict(encoder_no_repeat_ngram_size=2, renormalize_logits=True), "renormalize_logits"),
    # after led-large-book-summary's model card (its min_length, n-gram sizes, repetition penalty and
    # early stopping): the processors together, in transformers' order
    (MODEL_CARD, tuple(MODEL_CARD)),
], ids=lambda x: json.dumps(x) if isinstance(x, dict) else None)
def test_beam_setting_matches_and_matters(trained, settings, key):
    _check(trained, {**BEAM, **settings}, key)


def test_checkpoint_generation_config_is_honoured(trained, tmp_path):
    """The issue's case: a generation_config.json with encoder_no_repeat_ngram_size, read by
    convert.load (as summarize reads it) and by transformers' from_pretrained."""
    ref_model = trained[0]
    ref_model.save_pretrained(tmp_path)
    settings = {**BEAM, "encoder_no_repeat_ngram_size": 2, "renormalize_logits": True}
    (tmp_path / "generation_config.json").write_text(json.dumps({
        **settings, "bos_token_id": 0, "decoder_start_token_id": EOS, "eos_token_id": EOS, "pad_token_id": 1,
        "transformers_version": "5.24.0", "output_scores": False}))
    loaded = convert.load(tmp_path)
    assert loaded.generation_config.encoder_no_repeat_ngram_size == 2
    ids, am, glob = inputs()
    hf = transformers.LEDForConditionalGeneration.from_pretrained(tmp_path).double().eval()
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                          global_attention_mask=torch.tensor(glob)).numpy()
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), loaded.params)
        model = model_for(loaded.config, dtype=jnp.float64, param_dtype=jnp.float64)
        ours = generate(model, p64, ids, am, glob, loaded.generation_config).sequences
    assert_same(ref, ours, "generation_config.json")
    assert differs(ours, _run(trained, **BEAM)[2]), "the checkpoint's settings changed nothing"


def _teacher_forced_scores(ref_model, ids, am, glob, sequences, warper_lists, length_penalty):
    """transformers 5's beam-sample score of each given sequence, per list of warpers: the sum over its
    generated tokens of the warped log-probs (log-softmax, then the warpers), over (generated tokens) **
    length_penalty. Returns [len(warper_lists), rows]."""
    scores = np.zeros((len(warper_lists), len(sequences)))
    for row, seq in enumerate(sequences):
        stop = next((i for i in range(1, len(seq)) if seq[i] == EOS), len(seq) - 1)
        with torch.no_grad():
            logits = ref_model(input_ids=torch.tensor(ids[row:row + 1]), attention_mask=torch.tensor(am[row:row + 1]),
                               global_attention_mask=torch.tensor(glob[row:row + 1]),
                               decoder_input_ids=torch.tensor(seq[None, :stop])).logits[0].float()
        for t in range(stop):
            log_probs = torch.log_softmax(logits[t:t + 1], dim=-1)
            for i, warpers in enumerate(warper_lists):
                scores[i, row] += float(warpers(torch.tensor(seq[None, :t + 1]), log_probs)[0, seq[t + 1]])
        scores[:, row] /= stop ** length_penalty
    return scores


def test_beam_sampling_scores_are_transformers_warped_log_probs(trained):
    """Beam sampling warps each beam's log-probs (min_tokens_to_keep = eos ids + 1) and scores a beam
    by the sum of its warped log-probs, as transformers 5 does: checked on the sampled sequences by a
    teacher-forced pass through transformers' own warpers."""
    ref_model, cfg, params, _ = trained
    ids, am, glob = inputs(seed=3, b=3)
    settings = dict(num_beams=3, do_sample=True, temperature=0.7, top_k=6, typical_p=0.9, max_length=14,
                    length_penalty=1.5)
    out = generate(model_for(cfg), params, ids, am, glob, prng_key=jax.random.PRNGKey(0), **settings)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(6, min_tokens_to_keep=2),
                                   TypicalLogitsWarper(0.9, min_tokens_to_keep=2)])
    expected, plain = _teacher_forced_scores(ref_model, ids, am, glob, out.sequences,
                                             [warpers, LogitsProcessorList()], 1.5)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-4)
    assert np.abs(plain - expected).min() > 1e-2  # the temperature shows in the scores
