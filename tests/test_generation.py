"""Generation against transformers' `generate` (the oracle and the trained checkpoint are in
generation_helpers): greedy and beam search ids in float64, beam scores, sampling's keys, and reading
HF's generation_config.json. The settings of released summarization checkpoints beyond these are in
test_generation_settings.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from generation_helpers import EOS, assert_same, both, ends, inputs, trained_checkpoint
from led_flax import model_for
from led_flax.decoding.generation import GenerationConfig, generate


@pytest.fixture(scope="module")
def trained(shared_dir):
    return trained_checkpoint(shared_dir)


ARXIV = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=4, early_stopping=True, max_length=20)


def test_the_checkpoint_learned_its_task(trained):
    # the noise half of the targets alone costs about 0.6 * log(19) per token; the copy half is learned
    assert trained[3] < 2.5, f"training loss {trained[3]:.2f}: the fixture did not learn"


def test_greedy_matches_reference_and_is_not_trivial(trained):
    ref, ours = both(trained, max_length=20)
    assert_same(ref, ours, "greedy")
    stops = ends(ours)
    assert sum(e is not None and e < ours.shape[1] - 1 for e in stops) >= 2, f"few rows end early: {ours}"
    assert len({e for e in stops}) >= 3, f"output lengths do not vary: {stops}"


def test_beam_search_matches_reference_with_the_arxiv_settings(trained):
    ref, ours = both(trained, **ARXIV)
    assert_same(ref, ours, "beam search")
    _, greedy = both(trained, max_length=20)
    width = min(greedy.shape[1], ours.shape[1])
    assert not np.array_equal(greedy[:, :width], ours[:, :width]), "beam search chose what greedy chose"


@pytest.mark.parametrize("off", ["no_repeat_ngram_size", "min_length", "length_penalty", "early_stopping"])
def test_each_beam_setting_matches_and_each_processor_matters(trained, off):
    neutral = {"no_repeat_ngram_size": 0, "min_length": 0, "length_penalty": 1.0, "early_stopping": False}
    settings = {**ARXIV, "min_length": 8}
    with_all = both(trained, **settings)[1]
    ref, ours = both(trained, **{**settings, off: neutral[off]})
    assert_same(ref, ours, f"beam search without {off}")
    # the processors must change the ids; the length penalty changes the scores (test below), and
    # early stopping only how long the search goes on, so those two may settle on the same ids here
    if off in ("no_repeat_ngram_size", "min_length"):
        assert ours.shape != with_all.shape or not np.array_equal(ours, with_all), f"{off} changed nothing"


@pytest.mark.parametrize("settings", [dict(repetition_penalty=3.0), dict(no_repeat_ngram_size=2),
                                      dict(min_new_tokens=6), dict(max_new_tokens=5),
                                      dict(forced_bos_token_id=7, forced_eos_token_id=EOS)])
def test_greedy_processors_match_and_matter(trained, settings):
    plain = both(trained, max_length=20)[1]
    ref, ours = both(trained, max_length=20, **settings)
    assert_same(ref, ours, f"greedy with {settings}")
    assert ours.shape != plain.shape or not np.array_equal(ours, plain), f"{settings} changed nothing"


def test_num_return_sequences_and_scores_match(trained):
    ref_model, cfg, params, _ = trained
    ids, am, glob = inputs(seed=2, b=3)
    settings = dict(num_beams=4, num_return_sequences=3, max_length=18, length_penalty=1.5)
    with torch.no_grad():
        ref = ref_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                                 global_attention_mask=torch.tensor(glob), return_dict_in_generate=True,
                                 output_scores=True, **settings)
    out = generate(model_for(cfg), params, ids, am, glob, **settings)
    assert_same(ref.sequences.numpy(), out.sequences, "num_return_sequences")
    np.testing.assert_allclose(out.scores, ref.sequences_scores.numpy(), rtol=1e-5, atol=1e-6)
    plain = generate(model_for(cfg), params, ids, am, glob, **{**settings, "length_penalty": 1.0})
    assert np.abs(plain.scores - out.scores).max() > 1e-3  # the penalty divides by length ** 1.5


def test_sampling_follows_the_key(trained):
    _, cfg, params, _ = trained
    model = model_for(cfg)
    ids, am, glob = inputs()
    run = lambda seed, **kw: generate(model, params, ids, am, glob, do_sample=True, max_length=20,
                                      prng_key=jax.random.PRNGKey(seed), **kw).sequences
    a, b, c = run(0, temperature=1.5), run(0, temperature=1.5), run(1, temperature=1.5)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    greedy = generate(model, params, ids, am, glob, max_length=20).sequences
    np.testing.assert_array_equal(run(5, top_k=1), greedy)  # top-1 sampling is greedy
    with pytest.raises(ValueError, match="PRNG key"):
        generate(model, params, ids, am, glob, do_sample=True)


def test_generation_config_reads_hf_files(tmp_path, trained):
    _, cfg, _, _ = trained
    (tmp_path / "generation_config.json").write_text(
        '{"num_beams": 4, "length_penalty": 2.0, "max_length": 512, "min_length": 100, '
        '"no_repeat_ngram_size": 3, "early_stopping": true, "decoder_start_token_id": 2, "transformers_version": "5"}')
    g = GenerationConfig.from_hf(tmp_path, cfg)
    assert (g.num_beams, g.length_penalty, g.max_length, g.min_length, g.no_repeat_ngram_size, g.early_stopping) == \
        (4, 2.0, 512, 100, 3, True)
    old = cfg.replace(extra=(("num_beams", "3"), ("max_length", "64")))
    g = GenerationConfig.from_hf(None, old)
    assert g.num_beams == 3 and g.max_length == 64 and g.eos_token_id == cfg.eos_token_id
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationConfig(num_beams=2, num_return_sequences=3)
    with pytest.raises(TypeError, match="unknown generation settings"):
        GenerationConfig().replace(beams=4)
