"""Longformer's sliding-window + global self-attention as pure functions.

Time and memory are O(n·w): the sequence is cut into blocks of `w` tokens (`w` = half the window);
each block's queries see the keys of the block itself and of its two neighbours (3w keys), and a
static band mask keeps the keys within `w` positions on each side. No n×n array is ever built.

Global attention, with `K` static slots per example (the slots past an example's global count are
masked):
- every ordinary row also scores the global tokens' *ordinary* keys and values, in one softmax with
  its band; global (and padding) keys are removed from the band so each global key counts once;
- the global tokens' own rows are recomputed as full attention from `query_global` against the
  `key_global`/`value_global` of every token, and overwrite the local result.
Rows of padding come out as zeros.

Shapes: b batch, n length, h heads, d head dim, c blocks, q/k a query/key inside a block (w / 3w),
g global slots (K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _neg(dtype) -> float:
    return float(jnp.finfo(dtype).min)


def softmax_dtype(dtype):
    """Scores and softmax run in float32 at least (bfloat16 in, float32 math; float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def count_global_slots(global_attention_mask, attention_mask=None, num_slots: int | None = None) -> int:
    """Host-side: the static number of global slots for a batch.

    By default the batch's largest global count rounded up to a power of two (0 when no token is
    global), so nearby counts share one compiled program. Raises if the batch has more global tokens
    than `num_slots`: they would otherwise be silently dropped.
    """
    if global_attention_mask is None:
        return num_slots or 0
    if isinstance(global_attention_mask, jax.core.Tracer):
        if num_slots is None:
            raise ValueError("global_attention_mask is traced (inside jax.jit): pass num_global_slots= "
                             "as a static int so the number of global slots is known at trace time")
        return num_slots
    g = np.asarray(global_attention_mask) > 0
    if attention_mask is not None and not isinstance(attention_mask, jax.core.Tracer):
        g &= np.asarray(attention_mask) > 0
    count = int(g.sum(axis=-1).max()) if g.size else 0
    if num_slots is None:
        return 0 if count == 0 else 1 << (count - 1).bit_length()
    if count > num_slots:
        raise ValueError(f"a sequence of the batch has {count} global tokens but num_global_slots is "
                         f"{num_slots}; raise num_global_slots to at least {count}")
    return num_slots


def global_token_indices(is_global, num_slots: int):
    """Positions of the global tokens of each row, in order, in `num_slots` static slots.

    is_global: [b, n] bool. Returns idx [b, g] int32 (n in empty slots) and valid [b, g] bool.
    """
    b, n = is_global.shape
    rank = jnp.cumsum(is_global, axis=1) - 1  # [b, n]: slot of each global token
    slot = jnp.where(is_global, rank, num_slots)  # non-global tokens go to a dropped slot
    idx = jnp.full((b, num_slots), n, jnp.int32)
    idx = idx.at[jnp.arange(b)[:, None], slot].set(jnp.arange(n, dtype=jnp.int32)[None, :], mode="drop")
    return idx, idx < n


def _three_blocks(x, w: int, fill):
    """x: [b, m, ...] with m = c*w -> [b, c, 3w, ...]: each block with its left and right neighbour."""
    b, m = x.shape[:2]
    c = m // w
    pad = [(0, 0), (w, w)] + [(0, 0)] * (x.ndim - 2)
    xp = jnp.pad(x, pad, constant_values=fill)  # [b, m + 2w, ...]
    parts = [xp[:, i * w: i * w + m].reshape(b, c, w, *x.shape[2:]) for i in range(3)]
    return jnp.concatenate(parts, axis=2)  # [b, c, 3w, ...]


def _band(w: int) -> np.ndarray:
    """[w, 3w] bool: key k of the 3-block window is within w positions of query q of the middle block."""
    q = np.arange(w)[:, None]
    k = np.arange(3 * w)[None, :]
    return np.abs(k - w - q) <= w


def _dropout(probs, rate: float, rng):
    if rng is None or rate == 0.0:
        return probs
    keep = jax.random.bernoulli(rng, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


def sliding_window_attention(q, k, v, *, one_sided: int, key_mask, query_mask,
                             global_k=None, global_v=None, global_mask=None,
                             dropout_rate: float = 0.0, dropout_rng=None, return_probs: bool = False):
    """Banded attention of every row, plus the global keys, in one softmax.

    q, k, v: [b, n, h, d] (q already scaled); one_sided: w, half the window.
    key_mask: [b, n] True for keys allowed in the band (real and not global).
    query_mask: [b, n] False for rows to zero (padding).
    global_k, global_v: [b, g, h, d] the ordinary keys/values of the global tokens; global_mask [b, g].
    Returns out [b, n, h, d]; with return_probs also band probabilities [b, n, h, 2w+1] (HF's layout:
    column j is key i - w + j) and global-key probabilities [b, n, h, g].
    """
    b, n, h, d = q.shape
    w = one_sided
    m = -(-n // w) * w  # n rounded up to whole blocks
    c = m // w
    if m != n:
        pad = [(0, 0), (0, m - n), (0, 0), (0, 0)]
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        key_mask = jnp.pad(key_mask, [(0, 0), (0, m - n)])
        query_mask = jnp.pad(query_mask, [(0, 0), (0, m - n)])
    sdt = softmax_dtype(q.dtype)
    neg = _neg(sdt)

    qb = q.reshape(b, c, w, h, d)  # [b, c, q, h, d]
    k3 = _three_blocks(k, w, 0)  # [b, c, 3w, h, d]
    v3 = _three_blocks(v, w, 0)  # [b, c, 3w, h, d]
    km3 = _three_blocks(key_mask, w, False)  # [b, c, 3w]
    # scores: [b, c, h, q, k]
    scores = jnp.einsum("bcqhd,bckhd->bchqk", qb, k3).astype(sdt)
    allowed = jnp.asarray(_band(w))[None, None, None] & km3[:, :, None, None, :]
    scores = jnp.where(allowed, scores, neg)
    row_max = scores.max(-1)  # [b, c, h, q]

    has_global = global_k is not None and global_k.shape[1] > 0
    if has_global:
        # gscores: [b, c, h, q, g]
        gscores = jnp.einsum("bcqhd,bghd->bchqg", qb, global_k).astype(sdt)
        gscores = jnp.where(global_mask[:, None, None, None, :], gscores, neg)
        row_max = jnp.maximum(row_max, gscores.max(-1))

    e = jnp.exp(scores - row_max[..., None])  # [b, c, h, q, k]
    denom = e.sum(-1)
    if has_global:
        eg = jnp.exp(gscores - row_max[..., None])  # [b, c, h, q, g]
        denom = denom + eg.sum(-1)
    rows = query_mask.reshape(b, c, 1, w)  # [b, c, 1, q]
    scale = jnp.where(rows, 1.0 / denom, 0.0)[..., None]  # padding rows -> 0
    probs = e * scale
    gprobs = eg * scale if has_global else None

    if dropout_rng is not None and dropout_rate > 0.0:
        band_rng, global_rng = jax.random.split(dropout_rng)
        probs_d = _dropout(probs, dropout_rate, band_rng)
        gprobs_d = _dropout(gprobs, dropout_rate, global_rng) if has_global else None
    else:
        probs_d, gprobs_d = probs, gprobs

    # out: [b, c, q, h, d]
    out = jnp.einsum("bchqk,bckhd->bcqhd", probs_d.astype(v.dtype), v3)
    if has_global:
        out = out + jnp.einsum("bchqg,bghd->bcqhd", gprobs_d.astype(v.dtype), global_v)
    out = out.reshape(b, m, h, d)[:, :n]

    if not return_probs:
        return out, None, None
    # band columns in HF's layout: key q + j of the 3w window, j in [0, 2w]
    cols = np.arange(w)[:, None] + np.arange(2 * w + 1)[None, :]  # [q, 2w+1]
    band = jnp.take_along_axis(probs, jnp.asarray(cols)[None, None, None], axis=-1)  # [b, c, h, q, 2w+1]
    band = band.transpose(0, 1, 3, 2, 4).reshape(b, m, h, 2 * w + 1)[:, :n]  # [b, n, h, 2w+1]
    if has_global:
        gcols = gprobs.transpose(0, 1, 3, 2, 4).reshape(b, m, h, -1)[:, :n]  # [b, n, h, g]
    else:
        gcols = jnp.zeros((b, n, h, 0), probs.dtype)
    return out, band, gcols


def global_rows_attention(qg, kg, vg, *, key_mask, slot_mask, dropout_rate: float = 0.0, dropout_rng=None):
    """Full attention of the global tokens' rows over every token.

    qg: [b, g, h, d] `query_global` of the global tokens (scaled); kg, vg: [b, n, h, d] `key_global`
    and `value_global` of every token; key_mask: [b, n] False for padding; slot_mask: [b, g].
    Returns out [b, g, h, d] and probs [b, h, g, n]. Empty slots attend uniformly, as in HF.
    """
    sdt = softmax_dtype(qg.dtype)
    scores = jnp.einsum("bghd,bnhd->bhgn", qg, kg).astype(sdt)  # [b, h, g, n]
    allowed = slot_mask[:, None, :, None] & key_mask[:, None, None, :]
    scores = jnp.where(allowed, scores, _neg(sdt))
    probs = jax.nn.softmax(scores, axis=-1)
    probs_d = _dropout(probs, dropout_rate, dropout_rng)
    out = jnp.einsum("bhgn,bnhd->bghd", probs_d.astype(vg.dtype), vg)  # [b, g, h, d]
    return out, probs


def gather_rows(x, idx):
    """x: [b, n, ...], idx: [b, g] (n marks an empty slot) -> [b, g, ...], empty slots read row n-1."""
    safe = jnp.minimum(idx, x.shape[1] - 1).reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, safe, axis=1)


def longformer_self_attention(q, k, v, q_global, k_global, v_global, *, one_sided: int, real, is_global,
                              global_idx, global_valid, dropout_rate: float = 0.0, dropout_rng=None,
                              return_probs: bool = False):
    """The whole encoder self-attention of one layer, from projected inputs.

    q, k, v: [b, n, h, d] (q scaled); q_global: [b, g, h, d] `query_global` of the global tokens
    (scaled, in slot order); k_global, v_global: [b, n, h, d]; real, is_global: [b, n] bool;
    global_idx, global_valid: [b, g] from `global_token_indices`.
    Returns out [b, n, h, d] and, with return_probs, HF's `attentions` [b, h, n, g + 2w + 1] and
    `global_attentions` [b, h, n, g] (None without global slots).
    """
    b, n = q.shape[:2]
    g = global_idx.shape[1]
    local_rng = global_rng = None
    if dropout_rng is not None:
        local_rng, global_rng = jax.random.split(dropout_rng)
    out, band_probs, gcol_probs = sliding_window_attention(
        q, k, v, one_sided=one_sided, key_mask=real & ~is_global, query_mask=real,
        global_k=gather_rows(k, global_idx) if g else None, global_v=gather_rows(v, global_idx) if g else None,
        global_mask=global_valid, dropout_rate=dropout_rate, dropout_rng=local_rng, return_probs=return_probs)
    global_probs = None
    if g:
        gout, global_probs = global_rows_attention(q_global, k_global, v_global, key_mask=real,
                                                   slot_mask=global_valid, dropout_rate=dropout_rate,
                                                   dropout_rng=global_rng)
        rows = jnp.where(global_valid, global_idx, n)  # empty slots are dropped
        out = out.at[jnp.arange(b)[:, None], rows].set(gout.astype(out.dtype), mode="drop")
    if not return_probs:
        return out, None, None
    probs = jnp.concatenate([gcol_probs, band_probs], axis=-1)  # [b, n, h, g + 2w + 1]
    probs = jnp.where(is_global[:, :, None, None], 0.0, probs)  # global rows are filler in HF's layout
    probs = probs.transpose(0, 2, 1, 3)  # [b, h, n, g + 2w + 1]
    if global_probs is not None:
        global_probs = global_probs.transpose(0, 1, 3, 2)  # [b, h, g, n] -> [b, h, n, g]
    return out, probs, global_probs
