"""The generation settings as traced values (issue 24), on the trained checkpoint of generation_helpers:
numbers that differ compile nothing (counted through jax.monitoring, as SummaryReport counts); per-row
length penalties and repetition penalties give each row transformers' ids at its own value; a row's
sample does not depend on the rest of its batch. The per-row warpers against transformers' own are in
test_generation_processors.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from generation_helpers import EOS, inputs, ours64, reference_with_scores, trained_checkpoint
from led_flax.decoding import settings as settings_lib
from led_flax.decoding.generation_config import GenerationConfig
from led_flax.utils.compilations import counting_compilations


@pytest.fixture(scope="module")
def trained(shared_dir):
    return trained_checkpoint(shared_dir)


def _compiled(trained, batch, **kwargs) -> tuple[int, np.ndarray]:
    with counting_compilations() as count:
        out = ours64(trained, batch, **kwargs)
    return count.compiled, np.asarray(out.scores)


def _upto_eos(row) -> list[int]:
    """A sequence up to its first eos after the start token (inclusive), without the padding after."""
    row = list(np.asarray(row))
    return row[:next((i + 1 for i in range(1, len(row)) if row[i] == EOS), len(row))]


def test_numbers_that_differ_run_one_program(trained):
    batch = inputs(seed=5, b=2)
    beam = dict(num_beams=3, max_length=13)  # a max_length no other test compiles for
    first, a = _compiled(trained, batch, length_penalty=0.8, **beam)
    again, b = _compiled(trained, batch, length_penalty=1.7, **beam)
    assert first >= 1 and again == 0, (first, again)
    assert not np.allclose(a, b)  # the new value reached the program

    sample = dict(do_sample=True, top_k=0, max_length=13, prng_key=jax.random.PRNGKey(0))
    first, _ = _compiled(trained, batch, temperature=0.7, top_p=0.9, repetition_penalty=1.3, **sample)
    again, _ = _compiled(trained, batch, temperature=1.4, top_p=0.6, repetition_penalty=2.0, **sample)
    assert first >= 1 and again == 0, (first, again)
    # documented: a setting at its neutral value is off, and leaves the warper out of another program
    neutral, _ = _compiled(trained, batch, temperature=1.0, top_p=0.9, repetition_penalty=1.3, **sample)
    assert neutral >= 1


def test_the_static_key_ignores_the_numbers():
    a = GenerationConfig(num_beams=4, length_penalty=0.5, repetition_penalty=1.2, exponential_decay_length_penalty=(3, 1.1))
    b = GenerationConfig(num_beams=4, length_penalty=(2.0, 0.1), repetition_penalty=3.0,
                         exponential_decay_length_penalty=(3, (1.5, 0.9)))
    assert settings_lib.static_part(a) == settings_lib.static_part(b)
    assert settings_lib.static_part(a) != settings_lib.static_part(a.replace(repetition_penalty=1.0))  # off
    # the warpers are off without sampling, whatever their values
    assert settings_lib.static_part(a.replace(temperature=0.3, top_p=0.5, top_k=3)) == settings_lib.static_part(a)
    with pytest.raises(ValueError, match=r"^GenerationConfig.length_penalty has 2 values for a batch of 3 inputs; "):
        settings_lib.split(b, 3)
    with pytest.raises(ValueError, match=r"^GenerationConfig.top_p must be in \(0, 1\] \(1.0: off\), or a list"):
        GenerationConfig(top_p=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"^seeds must be integers in \[0, 2\*\*32\), got -1"):
        settings_lib.split(a, 2, seeds=[3, -1])


@pytest.mark.parametrize("early_stopping,values", [(False, (0.5, 2.0)), ("never", (-1.0, 5.0))])
def test_beam_search_takes_a_length_penalty_per_row(trained, early_stopping, values):
    """Each row's ids and score equal transformers' generate run with that row's value for the whole
    batch. With early_stopping="never", transformers' branch on length_penalty > 0 is taken per row,
    and the two values give other ids; otherwise (this checkpoint is sure of its answers) other scores."""
    batch = inputs()
    per_row = [values[r % 2] for r in range(len(batch[0]))]
    settings = dict(num_beams=4, max_length=20, early_stopping=early_stopping)
    ours = ours64(trained, batch, length_penalty=per_row, **settings)
    refs = {v: reference_with_scores(trained, batch, length_penalty=v, **settings) for v in values}
    for r, v in enumerate(per_row):
        ref_ids, ref_scores = refs[v]
        assert _upto_eos(ours.sequences[r]) == _upto_eos(ref_ids[r]), f"row {r}, length_penalty {v}"
        np.testing.assert_allclose(ours.scores[r], ref_scores[r], rtol=1e-5, err_msg=f"row {r}")
    (ids_a, scores_a), (ids_b, scores_b) = refs[values[0]], refs[values[1]]
    if early_stopping == "never":
        assert all(_upto_eos(ids_a[r]) != _upto_eos(ids_b[r]) for r in range(len(per_row))), "same ids"
    else:
        assert np.abs(scores_a - scores_b).min() > 1e-3, "the two length penalties give the same scores"


def test_greedy_takes_a_repetition_penalty_per_row(trained):
    batch = inputs()
    per_row = [1.0, 1.5, 3.0, 1.0, 1.5, 3.0, 1.0, 1.5]  # 1.0: the penalty is off in that row
    ours = ours64(trained, batch, max_length=20, repetition_penalty=per_row)
    refs = {v: reference_with_scores(trained, batch, max_length=20, repetition_penalty=v)[0] for v in set(per_row)}
    for r, v in enumerate(per_row):
        assert _upto_eos(ours.sequences[r]) == _upto_eos(refs[v][r]), f"row {r}, repetition_penalty {v}"
    assert any(_upto_eos(refs[1.0][r]) != _upto_eos(refs[3.0][r]) for r in range(len(per_row)))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_a_rows_sample_does_not_depend_on_its_batch(trained, num_beams):
    """Row 2 alone, in a batch of 4, and moved to the front of a shuffled batch: the same sample, from
    fold_in(prng_key, its seed). Other seeds draw other samples (the test could fail)."""
    ids, am, glob = inputs(seed=7, b=4)
    settings = dict(do_sample=True, num_beams=num_beams, max_length=16, top_k=0, temperature=1.5,
                    prng_key=jax.random.PRNGKey(3))
    seeds = [11, 12, 13, 14]
    together = ours64(trained, (ids, am, glob), seeds=seeds, **settings).sequences
    alone = ours64(trained, (ids[2:3], am[2:3], glob[2:3]), seeds=[13], **settings).sequences
    order = [2, 0, 3, 1]
    moved = ours64(trained, (ids[order], am[order], glob[order]), seeds=[seeds[i] for i in order],
                   **settings).sequences
    assert _upto_eos(alone[0]) == _upto_eos(together[2])
    assert [_upto_eos(moved[k]) for k in range(4)] == [_upto_eos(together[i]) for i in order]
    other = ours64(trained, (ids, am, glob), seeds=[21, 22, 23, 24], **settings).sequences
    assert any(_upto_eos(other[r]) != _upto_eos(together[r]) for r in range(4)), "the seeds change nothing"
