"""One document's encoder over 8 fake CPU devices (the mesh's sequence axis), against the unsharded
model as the oracle: encoder outputs, generated ids, train-step gradients; a sequence-only mesh (8)
and a sequence x data mesh (4 x 2). The device work runs once, in a subprocess (tests/sequence_worker.py)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_on_eight_devices
from led_flax import LEDConfig
from led_flax.parallel import sequence


@pytest.fixture(scope="module")
def sharded():
    return run_on_eight_devices("sequence_worker.py")


def test_the_sharded_encoder_equals_the_unsharded_one(sharded):
    assert sharded["devices"] == 8
    cases = sharded["encoder"]
    assert len(cases) == 5  # 4 cases on 8 devices, the hardest also on 4 x 2
    for name, r in cases.items():
        assert r["rel"] <= 1e-5, (name, r)
        assert r["sharding"] == "P(None, 'sequence')", name  # returned split, never gathered


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_generated_ids_are_the_unsharded_ones(sharded, search):
    row = sharded["generate"][search]  # greedy on the 8-device mesh, beam search on the 4 x 2 one
    ref = np.asarray(row["ref"])
    assert len(set(ref[:, 1:].ravel().tolist())) > 3  # outputs that depend on the input, not one repeated id
    np.testing.assert_array_equal(np.asarray(row["ids"]), ref)
    assert row["scores_rel"] <= 1e-5


def test_train_step_gradients_are_the_unsharded_ones(sharded):
    assert set(sharded["grads"]) == {"sequence8", "sequence4xdata2"}
    for mesh_name, r in sharded["grads"].items():
        # the whole gradient to 1e-5 norm-relative; each leaf to 5e-5 (measured against at least 1e-3 of
        # the whole gradient's norm: a key bias's gradient is exactly zero, its rounding noise no error)
        assert r["loss_rel"] <= 1e-5 and r["all_rel"] <= 1e-5 and r["worst_leaf_rel"] <= 5e-5, (mesh_name, r)


def test_lengths_that_do_not_split_into_whole_blocks_are_refused():
    cfg = LEDConfig(attention_window=[8, 6], encoder_layers=2)
    assert sequence.length_unit(cfg, 1) == 8
    assert sequence.length_unit(cfg, 4) == 48  # blocks 4 and 3 per device: lcm 12, times 4 devices
    with pytest.raises(ValueError, match="does not split over 4 sequence devices into whole attention blocks: pad "
                                         "it to a multiple of 48"):
        sequence.check_length(cfg, 64, 4)
