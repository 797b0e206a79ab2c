"""The dense oracle for the encoder's attention: an explicit [b, h, n, n] mask, O(n²), tests only."""

import jax
import jax.numpy as jnp


def dense_reference_attention(q, k, v, qg, kg, vg, *, one_sided: int, attention_mask, is_global):
    """The test oracle: the same attention from an explicit [b, h, n, n] mask. O(n²); tests only.

    q, k, v, qg, kg, vg: [b, n, h, d] (q and qg scaled; qg is `query_global` of every token).
    """
    n = q.shape[1]
    valid = attention_mask > 0  # [b, n]
    pos = jnp.arange(n)
    band = jnp.abs(pos[:, None] - pos[None, :]) <= one_sided  # [n, n]
    local_key = valid & ~is_global  # [b, n]
    # ordinary rows: band keys that are real and not global, plus every global key
    allowed = (band[None] & local_key[:, None, :]) | is_global[:, None, :]  # [b, n(q), n(k)]
    neg = float(jnp.finfo(jnp.float32).min)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)  # [b, h, q, k]
    p = jax.nn.softmax(jnp.where(allowed[:, None], s, neg), axis=-1)
    local_out = jnp.einsum("bhqk,bkhd->bqhd", p, v)
    # global rows: every real key, with the global projections
    sg = jnp.einsum("bqhd,bkhd->bhqk", qg, kg).astype(jnp.float32)
    pg = jax.nn.softmax(jnp.where(valid[:, None, None, :], sg, neg), axis=-1)
    global_out = jnp.einsum("bhqk,bkhd->bqhd", pg, vg)
    out = jnp.where(is_global[:, :, None, None], global_out, local_out)
    return jnp.where(valid[:, :, None, None], out, 0.0)
