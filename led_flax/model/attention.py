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

Sequence parallelism: with `sequence_axis` (the name of a mesh axis over which the caller runs these
functions under `jax.shard_map`), each device holds a contiguous slice of n tokens, whole blocks of
them. The same functions then fetch one block of keys and values from each neighbouring device
(`lax.ppermute`), gather the few global tokens' keys and values from whichever device holds them, find
global-token positions with a scan across devices, and compute the global rows' softmax over all
tokens from per-device partial maxima, sums and weighted values. n is then the local length.

Shapes: b batch, n length, h heads, d head dim, c blocks, q/k a query/key inside a block (w / 3w),
g global slots (K).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.ad_checkpoint import checkpoint_name

from . import splash
from .config import ATTENTION_IMPLEMENTATIONS
from .inputs import merged_encoder_mask, token_roles


def _neg(dtype) -> float:
    return float(jnp.finfo(dtype).min)


def softmax_dtype(dtype):
    """Scores and softmax run in float32 at least (bfloat16 in, float32 math; float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def count_global_slots(global_attention_mask, attention_mask=None, num_slots: int | None = None) -> int:
    """Host-side: the static number of global slots for a batch.

    The global tokens are those the reference reads as global from both masks (`inputs.merged_encoder_mask`:
    a 2 in attention_mask counts too). By default the batch's largest global count rounded up to a power
    of two (0 when no token is global), so nearby counts share one compiled program. Raises if the
    batch has more global tokens than `num_slots`: they would otherwise be dropped. Traced masks cannot
    be counted: pass `num_slots`; a traced example with more global tokens than slots comes out of the
    encoder as NaN (see `global_overflow`).
    """
    if isinstance(global_attention_mask, jax.core.Tracer):
        if num_slots is None:
            raise ValueError("global_attention_mask is traced (inside jax.jit): pass num_global_slots= "
                             "as a static int so the number of global slots is known at trace time")
        return num_slots
    if isinstance(attention_mask, jax.core.Tracer):
        if num_slots is not None:
            return num_slots
        attention_mask = None  # count the host-side global mask's tokens (a traced 2 cannot be seen)
    merged = merged_encoder_mask(attention_mask, global_attention_mask)
    if merged is None:
        return num_slots or 0
    g = token_roles(np.asarray(merged))[1]
    count = int(g.sum(axis=-1).max()) if g.size else 0
    if num_slots is None:
        return 0 if count == 0 else 1 << (count - 1).bit_length()
    if count > num_slots:
        raise ValueError(f"a sequence of the batch has {count} global tokens but num_global_slots is "
                         f"{num_slots}; raise num_global_slots to at least {count}")
    return num_slots


def shard_start(n_local: int, sequence_axis: str | None):
    """The position of this device's first token (0 without sequence sharding)."""
    if sequence_axis is None:
        return 0
    return jax.lax.axis_index(sequence_axis) * n_local


def global_count(is_global, sequence_axis: str | None = None):
    """[b] int: the global tokens of each example (summed over the sequence shards)."""
    count = is_global.sum(axis=-1)
    return count if sequence_axis is None else jax.lax.psum(count, sequence_axis)


def global_overflow(is_global, num_slots: int, sequence_axis: str | None = None):
    """[b] bool: the examples with more global tokens than `num_slots` (their extra tokens would be
    dropped; the encoder turns these examples' outputs into NaN instead)."""
    return global_count(is_global, sequence_axis) > num_slots


def global_token_indices(is_global, num_slots: int, sequence_axis: str | None = None):
    """Positions of the global tokens of each row, in order, in `num_slots` static slots.

    is_global: [b, n] bool (this device's tokens when sharded). Returns idx [b, g] int32, the tokens'
    positions in the whole sequence (the whole length in empty slots), and valid [b, g] bool, the same
    on every device. Sharded, a token's slot is its rank on its device plus the global tokens of the
    devices before it (an exclusive scan of the per-device counts).
    """
    b, n = is_global.shape
    rank = jnp.cumsum(is_global, axis=1) - 1  # [b, n]: slot of each global token on this device
    start, total = 0, n
    if sequence_axis is not None:
        counts = jax.lax.all_gather(is_global.sum(axis=1), sequence_axis)  # [devices, b]
        me = jax.lax.axis_index(sequence_axis)
        rank = rank + jnp.where(jnp.arange(counts.shape[0])[:, None] < me, counts, 0).sum(0)[:, None]
        start, total = shard_start(n, sequence_axis), n * counts.shape[0]
    slot = jnp.where(is_global, rank, num_slots)  # non-global tokens go to a dropped slot
    idx = jnp.full((b, num_slots), total, jnp.int32)
    idx = idx.at[jnp.arange(b)[:, None], slot].set(start + jnp.arange(n, dtype=jnp.int32)[None, :], mode="drop")
    if sequence_axis is not None:  # each slot is filled on the one device holding its token
        idx = jax.lax.pmin(idx, sequence_axis)
    return idx, idx < total


def _band_masks(w: int):
    """[w, w] bool masks for the previous and next block: key k is within w positions of query q."""
    q = np.arange(w)[:, None]
    k = np.arange(w)[None, :]
    return k >= q, k <= q  # previous block: key at k - w, offset k - w - q >= -w; next: k + w - q <= w


def _dropout(x, rate: float, rng):
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


# Scores of this many bytes or fewer are computed in one step; longer inputs loop over groups of
# blocks (lax.map), and when one block of every head passes it, over groups of heads too, so the
# attention's working memory neither grows with the length nor holds more than this of scores
# (led-base: 12 heads x 512 queries x 1,536 keys in float32 are 38 MB; in 3 groups of 4 heads, 13 MB).
SCORE_BYTES_PER_STEP = 16 * 2**20
UNNORMALISED_OUT = "banded_attention_unnormalised_out"  # [b, h, c, q, d], kept for the backward pass


def _blocks_attention(qb, ks, vs, kms, qmask, global_k, global_v, global_mask, bands, dropout_rate, rng):
    """One group of c blocks. qb: [b, h, c, q, d]; ks, vs: the previous, own and next key/value blocks,
    each [b, h, c, k, d]; kms: their key masks, each [b, 1, c, k]; qmask: [b, 1, c, q].
    Returns out [b, h, c, q, d] and, for the probabilities, the exp terms and the row scale."""
    sdt = softmax_dtype(qb.dtype)
    neg = _neg(sdt)
    scores = []
    for kb, km, band in zip(ks, kms, bands):
        s = jnp.einsum("bhcqd,bhckd->bhcqk", qb, kb).astype(sdt)  # [b, h, c, q, k]
        allowed = km[:, :, :, None, :]  # [b, 1, c, 1, k]
        if band is not None:
            allowed = allowed & band
        scores.append(jnp.where(allowed, s, neg))
    row_max = jnp.maximum(jnp.maximum(scores[0].max(-1), scores[1].max(-1)), scores[2].max(-1))  # [b, h, c, q]
    if global_k is not None:
        gs = jnp.einsum("bhcqd,bghd->bhcqg", qb, global_k).astype(sdt)  # [b, h, c, q, g]
        gs = jnp.where(global_mask[:, None, None, None, :], gs, neg)
        row_max = jnp.maximum(row_max, gs.max(-1))
        scores.append(gs)
    # the softmax does not depend on the shift, so no gradient goes through the max (as in
    # jax.nn.softmax): its backward pass, a compare-and-select over every score, is skipped
    row_max = jax.lax.stop_gradient(row_max)
    exps = [jnp.exp(s - row_max[..., None]) for s in scores]
    denom = sum(e.sum(-1) for e in exps)  # [b, h, c, q]
    scale = jnp.where(qmask, 1.0 / denom, 0.0)  # padding rows -> 0

    dropped = exps
    if rng is not None and dropout_rate > 0.0:  # dropping exp terms before normalising drops the same probabilities
        dropped = [_dropout(e, dropout_rate, r) for e, r in zip(exps, jax.random.split(rng, len(exps)))]
    dropped = [e.astype(qb.dtype) for e in dropped]
    out = sum(jnp.einsum("bhcqk,bhckd->bhcqd", e, vb) for e, vb in zip(dropped[:3], vs))  # [b, h, c, q, d]
    if global_k is not None:
        out = out + jnp.einsum("bhcqg,bghd->bhcqd", dropped[3], global_v)
    # saved by the group's checkpoint (`sliding_window_attention`): the gradient of the normalisation
    # reads it, so the backward pass recomputes the scores and exp terms but not this product
    out = checkpoint_name(out, UNNORMALISED_OUT)
    return out * scale[..., None].astype(out.dtype), exps, scale


def _halos(x, c: int, sequence_axis: str | None):
    """x: [b, h, c, ...] blocks -> the block before the first and the block after the last: this
    device's neighbours' edge blocks when sharded (`ppermute`), zeros at the ends of the sequence."""
    if sequence_axis is None:
        zero = jnp.zeros_like(x[:, :, :1])
        return zero, zero
    size = jax.lax.axis_size(sequence_axis)
    prev = jax.lax.ppermute(x[:, :, c - 1:c], sequence_axis, [(i, i + 1) for i in range(size - 1)])
    nxt = jax.lax.ppermute(x[:, :, :1], sequence_axis, [(i + 1, i) for i in range(size - 1)])
    return prev, nxt


def sliding_window_attention(q, k, v, *, one_sided: int, key_mask, query_mask,
                             global_k=None, global_v=None, global_mask=None,
                             dropout_rate: float = 0.0, dropout_rng=None, return_probs: bool = False,
                             sequence_axis: str | None = None):
    """Banded attention of every row, plus the global keys, in one softmax.

    q, k, v: [b, n, h, d] (q already scaled); one_sided: w, half the window.
    key_mask: [b, n] True for keys allowed in the band (real and not global).
    query_mask: [b, n] False for rows to zero (padding).
    global_k, global_v: [b, g, h, d] the ordinary keys/values of the global tokens; global_mask [b, g].
    Returns out [b, n, h, d]; with return_probs also band probabilities [b, n, h, 2w+1] (HF's layout:
    column j is key i - w + j) and global-key probabilities [b, n, h, g].

    Each block of w queries scores its own block and its two neighbours as three [w, w] products
    (no n×n array, and no 3w-wide copy of the scores); the softmax normalisation is applied to the
    [w, d] output rather than to the [w, 3w] probabilities.

    sequence_axis: sharded over this mesh axis (see the module docstring); n must then be a whole
    number of blocks.
    """
    b, n, h, d = q.shape
    w = one_sided
    c = -(-n // w)  # blocks
    if sequence_axis is not None and n % w:
        raise ValueError(f"a sequence shard of {n} tokens is not a whole number of {w}-token attention blocks; "
                         f"pad the input to a multiple of the devices times the attention blocks")
    if global_k is not None and global_k.shape[1] == 0:
        global_k = global_v = global_mask = None
    per_head_block = b * w * 3 * w * jnp.dtype(softmax_dtype(q.dtype)).itemsize
    step, heads = c, h  # blocks and heads per step: all at once for the probabilities, else within the budget
    if not return_probs:
        step = max(1, min(c, SCORE_BYTES_PER_STEP // (h * per_head_block)))
        if h * per_head_block > SCORE_BYTES_PER_STEP:  # one block of every head is too much: fewer heads
            heads = max([1] + [x for x in range(1, h + 1) if h % x == 0 and x * per_head_block <= SCORE_BYTES_PER_STEP])
    c_pad = -(-c // step) * step
    m = c_pad * w
    if m != n:
        pad = [(0, 0), (0, m - n), (0, 0), (0, 0)]
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        key_mask = jnp.pad(key_mask, [(0, 0), (0, m - n)])
        query_mask = jnp.pad(query_mask, [(0, 0), (0, m - n)])

    def blocks(x):  # [b, m, h, d] -> [b, h, c_pad, w, d]
        return x.transpose(0, 2, 1, 3).reshape(b, h, c_pad, w, d)

    def with_halos(x):  # [b, h, c_pad, ...] -> [b, h, c_pad + 2, ...]: block j's neighbours are j, j + 1, j + 2
        prev, nxt = _halos(x, c, sequence_axis)  # zeros past the ends of the sequence
        return jnp.concatenate([prev, x[:, :, :c], nxt, x[:, :, c:], jnp.zeros_like(prev)], axis=2)

    qb = blocks(q)  # [b, h, c_pad, q, d]
    kp, vp = with_halos(blocks(k)), with_halos(blocks(v))  # each [b, h, c_pad + 2, k, d]
    kmp = with_halos(key_mask.reshape(b, 1, c_pad, w))  # [b, 1, c_pad + 2, k]
    qmask = query_mask.reshape(b, 1, c_pad, w)  # [b, 1, c_pad, q]
    prev_band, next_band = _band_masks(w)
    bands = (prev_band, None, next_band)
    rate = dropout_rate if dropout_rng is not None else 0.0

    def group(first, head, rng):
        """Blocks first .. first + step - 1 of heads head .. head + heads - 1, sliced out of the whole
        arrays (no per-group copies of the keys): out [b, heads, step, q, d], the exp terms and the
        row scale."""
        def take(x, size, sliced_heads=True):  # [b, h, c, ...] -> [b, heads, size, ...]
            x = jax.lax.dynamic_slice_in_dim(x, first, size, axis=2)
            return jax.lax.dynamic_slice_in_dim(x, head, heads, axis=1) if sliced_heads else x
        kw, vw, kmw = take(kp, step + 2), take(vp, step + 2), take(kmp, step + 2, False)  # [b, heads, step + 2, k, d]
        three = lambda x: tuple(x[:, :, i:i + step] for i in range(3))  # previous, own and next blocks
        gk = gv = None
        if global_k is not None:  # [b, g, heads, d]
            gk, gv = (jax.lax.dynamic_slice_in_dim(x, head, heads, axis=2) for x in (global_k, global_v))
        return _blocks_attention(take(qb, step), three(kw), three(vw), three(kmw), take(qmask, step, False), gk, gv,
                                 global_mask, bands, rate, rng)

    if return_probs:
        out, exps, scale = group(0, 0, dropout_rng)
    else:
        groups, head_groups = c_pad // step, h // heads
        single = groups * head_groups == 1

        def body(i):  # each group's scores are recomputed in the backward pass (jax.checkpoint), so
            # training, like inference, holds one group of scores at a time rather than all n x 3w
            rng = dropout_rng if single or rate == 0.0 else jax.random.fold_in(dropout_rng, i)
            first, head = (i // head_groups) * step, (i % head_groups) * heads
            out = group(first, head, rng)[0]  # [b, heads, step, q, d]
            return out.reshape(b, heads, step * w, d).transpose(0, 2, 1, 3)  # [b, step * w, heads, d]

        body = jax.checkpoint(body, prevent_cse=False, policy=jax.checkpoint_policies.save_only_these_names(
            UNNORMALISED_OUT))
        if single:
            out = body(0)  # [b, m, h, d]
        else:  # a loop over the groups of blocks and heads; each writes its slice of the output
            out = jax.lax.map(body, jnp.arange(groups * head_groups))  # [groups * head groups, b, step * w, heads, d]
            out = out.reshape(groups, head_groups, b, step * w, heads, d).transpose(2, 0, 3, 1, 4, 5)
            out = out.reshape(b, m, h, d)
        return out[:, :n], None, None
    out = out.reshape(b, h, m, d).transpose(0, 2, 1, 3)[:, :n]  # [b, n, h, d]

    if not return_probs:
        return out, None, None
    probs = jnp.concatenate(exps[:3], axis=-1) * scale[..., None]  # [b, h, c, q, 3w]
    # band columns in HF's layout: key q + j of the 3w window, j in [0, 2w]
    cols = np.arange(w)[:, None] + np.arange(2 * w + 1)[None, :]  # [q, 2w+1]
    band = jnp.take_along_axis(probs, jnp.asarray(cols)[None, None, None], axis=-1)  # [b, h, c, q, 2w+1]
    band = band.reshape(b, h, m, 2 * w + 1).transpose(0, 2, 1, 3)[:, :n]  # [b, n, h, 2w+1]
    if global_k is not None:
        gcols = (exps[3] * scale[..., None]).reshape(b, h, m, -1).transpose(0, 2, 1, 3)[:, :n]  # [b, n, h, g]
    else:
        gcols = jnp.zeros((b, n, h, 0), probs.dtype)
    return out, band, gcols


class FactoredProjection(NamedTuple):
    """`key_global`/`value_global` of every token, left unprojected: hidden [b, n, D], kernel [D, h, d],
    bias [h, d]. With few global slots (g < d) it is cheaper to fold the projection into the global
    queries than to project all n tokens: O(n·D·h·g) instead of O(n·D²)."""

    hidden: Any
    kernel: Any
    bias: Any


def sharded_softmax(scores, sequence_axis: str):
    """The softmax over a last axis split across devices, left unnormalised: exp(scores - max) with the
    max over every device's scores, and the denominator summed over them. scores: [..., n_local]
    float32 -> (exps [..., n_local], denominator [...]). Out = psum(exps @ v) / denominator."""
    top = jax.lax.pmax(jax.lax.stop_gradient(scores.max(-1, keepdims=True)), sequence_axis)  # [..., 1]
    exps = jnp.exp(scores - top)
    return exps, jax.lax.psum(exps.sum(-1), sequence_axis)


def global_rows_attention(qg, kg, vg, *, key_mask, slot_mask, dropout_rate: float = 0.0, dropout_rng=None,
                          sequence_axis: str | None = None):
    """Full attention of the global tokens' rows over every token.

    qg: [b, g, h, d] `query_global` of the global tokens (scaled); kg, vg: [b, n, h, d] `key_global`
    and `value_global` of every token, or each a FactoredProjection; key_mask: [b, n] False for
    padding; slot_mask: [b, g]. Returns out [b, g, h, d] and probs [b, h, g, n] (None when sharded).
    Empty slots attend uniformly, as in HF. Sharded over `sequence_axis`, kg, vg and key_mask are this
    device's tokens and the softmax is combined across devices (`sharded_softmax`).
    """
    sdt = softmax_dtype(qg.dtype)
    if isinstance(kg, FactoredProjection):
        q_in = jnp.einsum("bghd,Dhd->bghD", qg, kg.kernel)  # [b, g, h, D]: the query moved to input space
        scores = jnp.einsum("bnD,bghD->bhgn", kg.hidden, q_in) + jnp.einsum("bghd,hd->bhg", qg, kg.bias)[..., None]
    else:
        scores = jnp.einsum("bghd,bnhd->bhgn", qg, kg)  # [b, h, g, n]
    allowed = slot_mask[:, None, :, None] & key_mask[:, None, None, :]
    scores = jnp.where(allowed, scores.astype(sdt), _neg(sdt))
    if sequence_axis is None:
        probs = jax.nn.softmax(scores, axis=-1)
    else:
        probs, denom = sharded_softmax(scores, sequence_axis)  # unnormalised: divided after the sum
    probs_d = _dropout(probs, dropout_rate, dropout_rng).astype(qg.dtype)
    if isinstance(vg, FactoredProjection):
        mixed = jnp.einsum("bhgn,bnD->bhgD", probs_d, vg.hidden)  # [b, h, g, D]
        out = jnp.einsum("bhgD,Dhd->bghd", mixed, vg.kernel)  # [b, g, h, d]
        out = out + jnp.einsum("bhg,hd->bghd", probs_d.sum(-1), vg.bias)  # the bias, weighted by sum(p)
    else:
        out = jnp.einsum("bhgn,bnhd->bghd", probs_d, vg)  # [b, g, h, d]
    if sequence_axis is None:
        return out, probs
    out = jax.lax.psum(out, sequence_axis) / denom.transpose(0, 2, 1)[..., None].astype(out.dtype)  # [b, g, h, d]
    return out, None


def gather_rows(x, idx, sequence_axis: str | None = None):
    """x: [b, n, ...], idx: [b, g] positions (the length marks an empty slot) -> [b, g, ...]. Empty slots
    read row n-1 unsharded, zeros sharded; sharded, each row comes from the device that holds it."""
    n = x.shape[1]
    expand = lambda a: a.reshape(idx.shape + (1,) * (x.ndim - 2))
    if sequence_axis is None:
        return jnp.take_along_axis(x, expand(jnp.minimum(idx, n - 1)), axis=1)
    local = idx - shard_start(n, sequence_axis)
    owned = (local >= 0) & (local < n)
    rows = jnp.take_along_axis(x, expand(jnp.clip(local, 0, n - 1)), axis=1)
    return jax.lax.psum(jnp.where(expand(owned), rows, 0).astype(x.dtype), sequence_axis)


@struct.dataclass
class EncoderMasks:
    """Per-batch masks computed once and shared by every encoder layer."""

    real: Any  # [b, n] bool: not padding
    is_global: Any  # [b, n] bool
    global_idx: Any  # [b, g] int32: positions of the global tokens, n in empty slots
    global_valid: Any  # [b, g] bool
    # the mesh axis the sequence is sharded over (the arrays above hold this device's tokens), or None
    sequence_axis: str | None = struct.field(pytree_node=False, default=None)


def choose_implementation(setting: str, *, attention_dropout: float = 0.0, output_attentions: bool = False,
                          backend: str | None = None) -> str:
    """The encoder's local attention for one call: "xla" or "splash" (`LEDConfig.attention_implementation`).

    "auto" is splash on a TPU backend (`jax.default_backend()`, or `backend`) unless the call needs
    what splash lacks (attention dropout, attention maps), else xla.
    Raises ValueError for another setting, when "splash" is asked for one of those (attention dropout:
    only where it runs, in training), or on a GPU (splash is a TPU kernel).
    """
    if setting not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, got "
                         f"{setting!r}")
    backend = backend or jax.default_backend()
    if setting == "auto":
        fits = attention_dropout == 0.0 and not output_attentions
        return "splash" if backend == "tpu" and fits else "xla"
    if setting != "splash":
        return setting
    if output_attentions:
        raise ValueError("output_attentions is not available with attention_implementation 'splash' (the kernel "
                         "returns no attention maps); use attention_implementation 'xla' to inspect them")
    if attention_dropout:
        raise ValueError(f"attention_implementation 'splash' has no attention dropout but attention_dropout is "
                         f"{attention_dropout} and dropout is on; train without dropout (deterministic; training's "
                         f"model.dropout false), set attention_dropout to 0, or use attention_implementation 'xla'")
    if backend == "gpu":
        raise ValueError("attention_implementation 'splash' is a TPU kernel (Pallas splash attention); on a GPU "
                         "use attention_implementation 'xla' (or 'auto', which picks it)")
    return "splash"


def kernel_mesh(setting: str, sharding):
    """The context to trace a program in whose batch `sharding` places over several devices: the
    mesh (`jax.set_mesh`, or `use_abstract_mesh` for an abstract one, as `jax.export` takes) when the
    encoder runs splash, whose kernel then wraps itself in `jax.shard_map` (XLA cannot partition a
    Pallas call: "Mosaic kernels cannot be automatically partitioned"); nothing otherwise, so xla
    programs are unchanged. setting: `LEDConfig.attention_implementation`. Raises what
    `choose_implementation` raises."""
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.size == 1 or choose_implementation(setting) != "splash":
        return contextlib.nullcontext()
    if isinstance(mesh, jax.sharding.AbstractMesh):
        return jax.sharding.use_abstract_mesh(mesh)
    return jax.set_mesh(mesh)


def longformer_self_attention(q, k, v, q_global, k_global, v_global, masks: EncoderMasks, *, one_sided: int,
                              dropout_rate: float = 0.0, dropout_rng=None, return_probs: bool = False,
                              implementation: str = "xla"):
    """The whole encoder self-attention of one layer, from projected inputs.

    q, k, v: [b, n, h, d] (q scaled); q_global: [b, g, h, d] `query_global` of the global tokens
    (scaled, in slot order); k_global, v_global: [b, n, h, d] or FactoredProjection; masks: the
    batch's `EncoderMasks` (real and is_global [b, n]; global_idx and global_valid [b, g] from
    `global_token_indices`; the sequence axis).
    Returns out [b, n, h, d] and, with return_probs, HF's `attentions` [b, h, n, g + 2w + 1] and
    `global_attentions` [b, h, n, g] (None without global slots).
    With `masks.sequence_axis`, sharded over that mesh axis (n is this device's tokens); return_probs
    is then refused.
    implementation: "xla" (`sliding_window_attention`, the oracle) or "splash" (`splash.splash_attention`,
    one Pallas kernel call for the band and the global columns; see `choose_implementation` for what it
    refuses). The global tokens' own rows are `global_rows_attention` either way.
    """
    real, is_global, global_idx, global_valid = masks.real, masks.is_global, masks.global_idx, masks.global_valid
    sequence_axis = masks.sequence_axis
    b, n = q.shape[:2]
    g = global_idx.shape[1]
    if sequence_axis is not None and return_probs:
        raise ValueError("output_attentions is not available with the sequence sharded over devices: the "
                         "attention maps would be gathered onto one device; run unsharded to inspect them")
    local_rng = global_rng = None
    if dropout_rng is not None:
        if sequence_axis is not None:  # each device drops its own tokens' terms
            dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(sequence_axis))
        local_rng, global_rng = jax.random.split(dropout_rng)
    gather = lambda x: gather_rows(x, global_idx, sequence_axis) if g else None
    local = dict(one_sided=one_sided, key_mask=real & ~is_global, query_mask=real, global_k=gather(k),
                 global_v=gather(v), global_mask=global_valid)
    if implementation not in ("xla", "splash"):
        raise ValueError(f"implementation must be 'xla' or 'splash' (resolve 'auto' with choose_implementation), got "
                         f"{implementation!r}")
    if implementation == "splash":
        choose_implementation("splash", attention_dropout=dropout_rate if dropout_rng is not None else 0.0,
                              output_attentions=return_probs)  # raises what splash lacks
        out, band_probs, gcol_probs = splash.splash_attention(q, k, v, **local, sequence_axis=sequence_axis), None, None
    else:
        out, band_probs, gcol_probs = sliding_window_attention(
            q, k, v, **local, dropout_rate=dropout_rate, dropout_rng=local_rng, return_probs=return_probs,
            sequence_axis=sequence_axis)
    global_probs = None
    if g:
        gout, global_probs = global_rows_attention(q_global, k_global, v_global, key_mask=real,
                                                   slot_mask=global_valid, dropout_rate=dropout_rate,
                                                   dropout_rng=global_rng, sequence_axis=sequence_axis)
        local = global_idx - shard_start(n, sequence_axis)
        rows = jnp.where(global_valid & (local >= 0) & (local < n), local, n)  # empty and others' slots dropped
        out = out.at[jnp.arange(b)[:, None], rows].set(gout.astype(out.dtype), mode="drop")
    if not return_probs:
        return out, None, None
    probs = jnp.concatenate([gcol_probs, band_probs], axis=-1)  # [b, n, h, g + 2w + 1]
    probs = jnp.where(is_global[:, :, None, None], 0.0, probs)  # global rows are filler in HF's layout
    probs = probs.transpose(0, 2, 1, 3)  # [b, h, n, g + 2w + 1]
    if global_probs is not None:
        global_probs = global_probs.transpose(0, 1, 3, 2)  # [b, h, g, n] -> [b, h, n, g]
    return out, probs, global_probs
