"""Oracle: transformers' `generate` on the same checkpoint and inputs, in float64 on both sides (near
ties could flip an argmax between two correct float32 implementations).

The checkpoint is trained first, for a few hundred steps on a small task (copy the input after a
marker token, or emit noise after another; see _task_batch), so that its outputs depend on the input, vary in length, end with eos before
the limit, and leave beam search real choices; a random model emits eos at once or repeats one
token, and a generation test would pass for the wrong reason.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import convert
from led_flax import model_for
from led_flax.generation import GenerationConfig, generate

from conftest import hf_config

VOCAB, PAD, BOS, EOS = 24, 1, 0, 2


def _task_batch(rng, b, shortest=3, longest=9):
    lengths = rng.integers(shortest, longest + 1, b)
    n = int(lengths.max()) + 2
    ids = np.full((b, n), PAD, np.int64)
    am = np.zeros((b, n), np.int64)
    labels = np.full((b, longest + 2), -100, np.int64)
    for i, length in enumerate(lengths):
        body = rng.integers(5, VOCAB, length)
        ids[i, :length + 2] = [BOS, *body, EOS]
        am[i, :length + 2] = 1
        # A garden path: 60% of targets are marker 3 and random tokens, 40% marker 4 and the copy. Greedy
        # search takes the likelier first step into noise; beam search finds the sure copy behind 4.
        if rng.random() < 0.6:
            target = [3, *rng.integers(5, VOCAB, length), EOS]
        else:
            target = [4, *body, EOS]
        labels[i, :len(target)] = target
    return ids, am, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    config = hf_config(vocab_size=VOCAB, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4,
                       decoder_attention_heads=4, attention_window=[4, 8], max_encoder_position_embeddings=64,
                       max_decoder_position_embeddings=32, dropout=0.0)
    model = transformers.LEDForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(400):
        ids, am, labels = _task_batch(rng, 32)
        glob = np.zeros_like(ids)
        glob[:, 0] = 1
        loss = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                     global_attention_mask=torch.tensor(glob), labels=torch.tensor(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    directory = tmp_path_factory.mktemp("trained")
    model.save_pretrained(directory)
    cfg, params = convert.from_hf(directory)
    return model, cfg, params, float(loss.detach())


def _inputs(seed=1, b=8):
    ids, am, _ = _task_batch(np.random.default_rng(seed), b)
    width = max(ids.shape[1], 11)
    ids = np.pad(ids, [(0, 0), (0, width - ids.shape[1])], constant_values=PAD)
    am = np.pad(am, [(0, 0), (0, width - am.shape[1])])
    ids[0], am[0] = 1, 0  # a repeated trigram, for no_repeat_ngram_size to ban
    ids[0, :11], am[0, :11] = [BOS, 7, 8, 9, 7, 8, 9, 7, 8, 9, EOS], 1
    ids[1], am[1] = 1, 0  # a short input, for min_length to extend
    ids[1, :5], am[1, :5] = [BOS, 12, 13, 14, EOS], 1
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    return ids, am, glob


def _both(trained, **settings):
    """Generated ids from transformers (float64 model) and from us (float64 params, x64 enabled)."""
    ref_model, cfg, params, _ = trained
    ids, am, glob = _inputs()
    ref64 = ref_model.double()
    try:
        with torch.no_grad():
            ref = ref64.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                                 global_attention_mask=torch.tensor(glob), do_sample=False, **settings).numpy()
    finally:
        ref_model.float()
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        model = model_for(cfg, dtype=jnp.float64, param_dtype=jnp.float64)
        ours = generate(model, p64, ids, am, glob, **settings).sequences
    return ref, ours


def _assert_same(ref, ours, what):
    assert ref.shape == ours.shape, f"{what}: reference {ref.shape}, ours {ours.shape}\n{ref}\n{ours}"
    np.testing.assert_array_equal(ours, ref, err_msg=what)


def _ends(seqs):
    """Per row: the index of the first eos after the start token, or None."""
    return [next((i for i in range(1, len(r)) if r[i] == EOS), None) for r in seqs]


ARXIV = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=4, early_stopping=True, max_length=20)


def test_the_checkpoint_learned_its_task(trained):
    # the noise half of the targets alone costs about 0.6 * log(19) per token; the copy half is learned
    assert trained[3] < 2.5, f"training loss {trained[3]:.2f}: the fixture did not learn"


def test_greedy_matches_reference_and_is_not_trivial(trained):
    ref, ours = _both(trained, max_length=20)
    _assert_same(ref, ours, "greedy")
    ends = _ends(ours)
    assert sum(e is not None and e < ours.shape[1] - 1 for e in ends) >= 2, f"few rows end early: {ours}"
    assert len({e for e in ends}) >= 3, f"output lengths do not vary: {ends}"


def test_beam_search_matches_reference_with_the_arxiv_settings(trained):
    ref, ours = _both(trained, **ARXIV)
    _assert_same(ref, ours, "beam search")
    _, greedy = _both(trained, max_length=20)
    width = min(greedy.shape[1], ours.shape[1])
    assert not np.array_equal(greedy[:, :width], ours[:, :width]), "beam search chose what greedy chose"


@pytest.mark.parametrize("off", ["no_repeat_ngram_size", "min_length", "length_penalty", "early_stopping"])
def test_each_beam_setting_matches_and_each_processor_matters(trained, off):
    neutral = {"no_repeat_ngram_size": 0, "min_length": 0, "length_penalty": 1.0, "early_stopping": False}
    settings = {**ARXIV, "min_length": 8}
    with_all = _both(trained, **settings)[1]
    ref, ours = _both(trained, **{**settings, off: neutral[off]})
    _assert_same(ref, ours, f"beam search without {off}")
    # the processors must change the ids; the length penalty changes the scores (test below), and
    # early stopping only how long the search goes on, so those two may settle on the same ids here
    if off in ("no_repeat_ngram_size", "min_length"):
        assert ours.shape != with_all.shape or not np.array_equal(ours, with_all), f"{off} changed nothing"


@pytest.mark.parametrize("settings", [dict(repetition_penalty=3.0), dict(no_repeat_ngram_size=2),
                                      dict(min_new_tokens=6), dict(max_new_tokens=5),
                                      dict(forced_bos_token_id=7, forced_eos_token_id=EOS)])
def test_greedy_processors_match_and_matter(trained, settings):
    plain = _both(trained, max_length=20)[1]
    ref, ours = _both(trained, max_length=20, **settings)
    _assert_same(ref, ours, f"greedy with {settings}")
    assert ours.shape != plain.shape or not np.array_equal(ours, plain), f"{settings} changed nothing"


def test_num_return_sequences_and_scores_match(trained):
    ref_model, cfg, params, _ = trained
    ids, am, glob = _inputs(seed=2, b=3)
    settings = dict(num_beams=4, num_return_sequences=3, max_length=18, length_penalty=1.5)
    with torch.no_grad():
        ref = ref_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                                 global_attention_mask=torch.tensor(glob), return_dict_in_generate=True,
                                 output_scores=True, **settings)
    out = generate(model_for(cfg), params, ids, am, glob, **settings)
    _assert_same(ref.sequences.numpy(), out.sequences, "num_return_sequences")
    np.testing.assert_allclose(out.scores, ref.sequences_scores.numpy(), rtol=1e-5, atol=1e-6)
    plain = generate(model_for(cfg), params, ids, am, glob, **{**settings, "length_penalty": 1.0})
    assert np.abs(plain.scores - out.scores).max() > 1e-3  # the penalty divides by length ** 1.5


def test_sampling_follows_the_key(trained):
    _, cfg, params, _ = trained
    model = model_for(cfg)
    ids, am, glob = _inputs()
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
