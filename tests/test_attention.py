"""Oracle: dense attention under an explicit band-plus-global mask (tests/dense_oracle.py), itself
checked against transformers' LEDEncoderSelfAttention first."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dense_oracle import dense_reference_attention
from led_flax.model.attention import EncoderMasks, count_global_slots, global_token_indices, longformer_self_attention

TOL = 1e-5  # norm-relative, float32


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_banded(q, k, v, qg_all, kg, vg, one_sided, attention_mask, is_global, slots=None):
    is_global = jnp.asarray(is_global) & (jnp.asarray(attention_mask) > 0)
    slots = count_global_slots(np.asarray(is_global), None, slots)
    return _banded(q, k, v, qg_all, kg, vg, jnp.asarray(attention_mask) > 0, is_global, one_sided=one_sided,
                   slots=slots)


@partial(jax.jit, static_argnames=("one_sided", "slots"))  # one program, not op-by-op dispatch
def _banded(q, k, v, qg_all, kg, vg, real, is_global, *, one_sided, slots):
    idx, valid = global_token_indices(is_global, slots)
    q_global = jnp.take_along_axis(qg_all, jnp.minimum(idx, q.shape[1] - 1)[:, :, None, None], axis=1)
    masks = EncoderMasks(real=real, is_global=is_global, global_idx=idx, global_valid=valid)
    out, _, _ = longformer_self_attention(q, k, v, q_global, kg, vg, masks, one_sided=one_sided)
    return out


def test_dense_oracle_matches_reference_self_attention():
    """Before trusting the oracle, check it against transformers' own module."""
    from transformers import LEDConfig
    from transformers.models.led.modeling_led import LEDEncoderSelfAttention

    torch.manual_seed(0)
    b, n, D, h, window = 3, 16, 16, 2, 8
    cfg = LEDConfig(d_model=D, encoder_attention_heads=h, encoder_layers=1, attention_window=[window])
    module = LEDEncoderSelfAttention(cfg, layer_id=0).eval()
    hidden = torch.randn(b, n, D)
    real = torch.ones(b, n, dtype=torch.bool)
    real[1, 11:] = False
    real[2, 3:] = False
    glob = torch.zeros(b, n, dtype=torch.bool)
    glob[0, [0, 7, 15]] = True
    glob[1, 10] = True  # last real token, next to padding
    mask = torch.zeros(b, n)
    mask[~real] = -10000.0
    mask[glob] = 10000.0
    with torch.no_grad():
        ref = module(hidden, attention_mask=mask, is_index_masked=~real, is_index_global_attn=glob,
                     is_global_attn=True)[0]

        def proj(layer, scale=1.0):
            return (layer(hidden) / scale).view(b, n, h, D // h).numpy()

        s = math.sqrt(D // h)
        q, k, v = proj(module.query, s), proj(module.key), proj(module.value)
        qg, kg, vg = proj(module.query_global, s), proj(module.key_global), proj(module.value_global)
    ours = dense_reference_attention(q, k, v, qg, kg, vg, one_sided=window // 2, attention_mask=real.numpy(),
                                     is_global=glob.numpy())
    assert rel(np.asarray(ours).reshape(b, n, D), ref.numpy()) <= TOL


LENGTHS = [1, 2, 5, 7, 16, 33]
ONE_SIDED = [1, 2, 3, 5]  # windows 2, 4, 6, 10: HF cannot run a window of 2 at all


def _inputs(seed, b, n, h=2, d=4):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=(b, n, h, d)).astype(np.float32)) for _ in range(6)]


def _masks(pattern, b, n, rng):
    real = np.ones((b, n), bool)
    if n > 2:
        real[1, n - max(1, n // 3):] = False  # padding in the second row
    glob = np.zeros((b, n), bool)
    if pattern == "first":
        glob[:, 0] = True
    elif pattern == "many":
        glob[0, rng.choice(n, size=max(1, n // 2), replace=False)] = True
        last_real = real[1].sum() - 1
        glob[1, last_real] = True  # the last real token, next to padding
    elif pattern == "all":
        glob[:] = True
    return real, glob


@pytest.mark.parametrize("pattern", ["none", "first", "many", "all"])
@pytest.mark.parametrize("one_sided", ONE_SIDED)
@pytest.mark.parametrize("n", LENGTHS)
def test_banded_equals_dense(n, one_sided, pattern):
    b = 2
    rng = np.random.default_rng(n * 100 + one_sided)
    q, k, v, qg, kg, vg = _inputs(n * 7 + one_sided, b, n)
    real, glob = _masks(pattern, b, n, rng)
    ours = run_banded(q, k, v, qg, kg, vg, one_sided, real, glob)
    dense = dense_reference_attention(q, k, v, qg, kg, vg, one_sided=one_sided, attention_mask=real,
                                      is_global=glob & real)
    assert rel(ours, dense) <= TOL, f"n={n} w={one_sided} globals={pattern}"
    assert np.all(np.asarray(ours)[~real] == 0), "rows of padding must come out as zeros"


def test_padding_never_changes_real_tokens():
    """Appending padding (more blocks, more empty slots) leaves every real row unchanged."""
    b, n, w = 2, 11, 3
    q, k, v, qg, kg, vg = _inputs(3, b, n)
    real, glob = _masks("many", b, n, np.random.default_rng(0))
    base = run_banded(q, k, v, qg, kg, vg, w, real, glob)
    pad = lambda x: jnp.pad(x, [(0, 0), (0, 9), (0, 0), (0, 0)], constant_values=3.0)
    padded = run_banded(*(pad(x) for x in (q, k, v, qg, kg, vg)), w,
                        np.pad(real, [(0, 0), (0, 9)]), np.pad(glob, [(0, 0), (0, 9)]), slots=16)
    assert rel(np.asarray(padded)[:, :n][real], np.asarray(base)[real]) <= TOL


def test_memory_grows_linearly_with_length(monkeypatch):
    """No n×n array: the compiled program's temporary memory at 16k tokens is about twice that at 8k
    (a dense score matrix would make it four times). The scores of one step are a fixed cost, kept
    small here (2 blocks a step) so that what grows with the length shows."""
    from led_flax.model import attention
    h, d, w = 2, 16, 128
    monkeypatch.setattr(attention, "SCORE_BYTES_PER_STEP", 2 * h * w * 3 * w * 4)

    def temp_bytes(n):
        spec = jax.ShapeDtypeStruct((1, n, h, d), jnp.float32)
        mask = jax.ShapeDtypeStruct((1, n), jnp.bool_)
        gq = jax.ShapeDtypeStruct((1, 1, h, d), jnp.float32)

        def f(q, k, v, qg, kg, vg, real, glob):
            idx, valid = global_token_indices(glob, 1)
            masks = EncoderMasks(real=real, is_global=glob, global_idx=idx, global_valid=valid)
            return longformer_self_attention(q, k, v, qg, kg, vg, masks, one_sided=w)[0]

        compiled = jax.jit(f).lower(spec, spec, spec, gq, spec, spec, mask, mask).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(8192), temp_bytes(16384)
    ratio = large / small
    assert 1.6 <= ratio <= 2.4, f"temporary memory 8k: {small}, 16k: {large} (ratio {ratio:.2f})"
    assert large < 16384 * 16384 * 4, "a float32 n×n matrix would not fit in this budget"


def test_global_slots_default_and_errors():
    g = np.zeros((2, 10), int)
    assert count_global_slots(g) == 0
    g[0, :3] = 1
    assert count_global_slots(g) == 4  # 3 rounded up to a power of two
    g[1, :5] = 1
    assert count_global_slots(g) == 8
    assert count_global_slots(g, num_slots=5) == 5
    with pytest.raises(ValueError, match="at least 5"):
        count_global_slots(g, num_slots=4)
    am = np.ones((2, 10), int)
    am[1, 2:] = 0  # padded tokens marked global do not count
    assert count_global_slots(g, am) == 4
    with pytest.raises(ValueError, match="num_global_slots"):
        jax.jit(lambda x: count_global_slots(x))(jnp.asarray(g))


def test_global_token_indices_in_order_with_empty_slots():
    glob = jnp.asarray([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], bool)
    idx, valid = global_token_indices(glob, 4)
    np.testing.assert_array_equal(idx, [[1, 3, 4, 5], [5, 5, 5, 5]])
    np.testing.assert_array_equal(valid, [[1, 1, 1, 0], [0, 0, 0, 0]])


def test_factored_global_projection_equals_projecting_every_token():
    """With few global slots the key/value_global projection is folded into the global queries."""
    from led_flax.model.attention import FactoredProjection, global_rows_attention
    rng = np.random.default_rng(0)
    b, n, D, h, g = 2, 9, 12, 3, 2
    hidden = jnp.asarray(rng.normal(size=(b, n, D)), jnp.float32)
    qg = jnp.asarray(rng.normal(size=(b, g, h, D // h)), jnp.float32)
    (kk, kb), (vk, vb) = [(jnp.asarray(rng.normal(size=(D, h, D // h)), jnp.float32),
                           jnp.asarray(rng.normal(size=(h, D // h)), jnp.float32)) for _ in range(2)]
    key_mask = jnp.asarray(rng.random((b, n)) > 0.2)
    slots = jnp.asarray([[True, True], [True, False]])
    kg = jnp.einsum("bnD,Dhd->bnhd", hidden, kk) + kb
    vg = jnp.einsum("bnD,Dhd->bnhd", hidden, vk) + vb
    full = global_rows_attention(qg, kg, vg, key_mask=key_mask, slot_mask=slots)
    folded = global_rows_attention(qg, FactoredProjection(hidden, kk, kb), FactoredProjection(hidden, vk, vb),
                                   key_mask=key_mask, slot_mask=slots)
    for a, r in zip(folded, full):
        assert rel(a, r) <= TOL


def test_long_inputs_loop_over_block_groups_with_the_same_result(monkeypatch):
    """Past SCORE_BYTES_PER_STEP the blocks are processed a group at a time (lax.map), and a group of
    heads at a time when one block of every head passes it; the result is unchanged, also when the
    block count is not a multiple of the group."""
    from led_flax.model import attention
    b, n, w = 2, 23, 2
    q, k, v, qg, kg, vg = _inputs(5, b, n)
    real, glob = _masks("many", b, n, np.random.default_rng(1))
    whole = run_banded(q, k, v, qg, kg, vg, w, real, glob)
    per_block = b * q.shape[2] * w * 3 * w * 4
    monkeypatch.setattr(attention, "SCORE_BYTES_PER_STEP", 5 * per_block)  # 12 blocks in groups of 5
    grouped = run_banded(q, k, v, qg, kg, vg, w, real, glob)
    dense = dense_reference_attention(q, k, v, qg, kg, vg, one_sided=w, attention_mask=real, is_global=glob & real)
    assert rel(grouped, dense) <= TOL and rel(grouped, whole) <= TOL
    # one block of both heads over the budget: one block and one head a step (24 steps)
    monkeypatch.setattr(attention, "SCORE_BYTES_PER_STEP", per_block // 2)
    per_head = run_banded(q, k, v, qg, kg, vg, w, real, glob)
    assert rel(per_head, dense) <= TOL and rel(per_head, whole) <= TOL
    # and the gradients through the sliced groups are the whole program's
    weights = jnp.asarray(np.random.default_rng(2).normal(size=whole.shape).astype(np.float32))
    grads = lambda: jax.grad(lambda *x: (run_banded(*x, w, real, glob) * weights).sum(), argnums=(0, 1, 2))(
        q, k, v, qg, kg, vg)
    sliced = grads()
    monkeypatch.setattr(attention, "SCORE_BYTES_PER_STEP", 2**30)
    for a, r in zip(sliced, grads()):
        assert rel(a, r) <= TOL


def test_grouped_attention_memory_does_not_grow_with_the_scores():
    """At the led-base shape (12 heads, window 1024) the scores of 16k tokens would take 1.2 GB; in
    groups of blocks the compiled temporaries stay far below that. Each group slices its keys out of
    the whole arrays, so the forward holds about five [n, h, d] arrays (the blocked queries, keys with
    their halos, values, the outputs) and the gradient about seven and a half; per-group copies of the
    three neighbour blocks took 8.8 and 14.3."""
    h, d, w, n = 12, 64, 512, 16384
    spec = jax.ShapeDtypeStruct((1, n, h, d), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, n), jnp.bool_)

    def f(q, k, v, real):
        from led_flax.model.attention import sliding_window_attention
        return sliding_window_attention(q, k, v, one_sided=w, key_mask=real, query_mask=real)[0]

    temp = lambda fn: fn.lower(spec, spec, spec, mask).compile().memory_analysis().temp_size_in_bytes
    one = n * h * d * 4  # one [n, h, d] array
    forward = temp(jax.jit(f))
    backward = temp(jax.jit(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))))
    assert forward <= 6 * one, f"temporaries {forward / one:.1f} x [n, h, d]"
    assert backward <= 9 * one, f"gradient temporaries {backward / one:.1f} x [n, h, d]"
