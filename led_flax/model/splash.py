"""The encoder's band and global columns in one Pallas splash-attention call (TPU; interpret mode on CPU).

Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) skips every key block its mask
leaves empty, so a band of half-width w costs O(n·w) on a TPU. One call per layer computes what
`attention.sliding_window_attention` computes, the ordinary rows of Longformer's self-attention:

- keys and values are the global tokens' ordinary keys and values, gathered into the first G slots
  (padded to the kernel's block of 128), followed by the sequence's own (with the sequence split over
  devices, this device's slice with the w keys on each side of it from its neighbours);
- the mask (`BandWithGlobalColumns`) opens the first G key columns to every query, and after them
  `LocalMask`'s band of w on each side (its offset is G, plus w when split);
- per-example masking is `SegmentIds`, [n] arrays: queries are REAL, or PADDING for padded rows (which
  then see the padding keys of their band, so no row is empty); a key is REAL, PADDING, or HIDDEN (an id
  no query has) when it is an empty global slot or a global token inside the band: the reference
  takes global tokens out of the band and counts them once, as columns (`key_mask = real & ~is_global`).

Why one call: splash's `save_residuals=True` (which returns the logsumexp needed to merge two passes)
has no derivative, so a band pass and a global-column pass merged by their logsumexps could not be
trained. The gradient here is splash's own backward.

The sequence is padded to the kernel's block on top of LED's window padding and cut back after. Under
a mesh (`jax.set_mesh`; `attention.kernel_mesh` for generation), `jax.shard_map` goes around the
kernel, which the partitioner cannot split: over every axis not manual yet, the batch over the
mesh's batch axes and the heads over its tensor axis (`parallel.sharding.RULES`), each where it
divides. Splash has no attention dropout and returns no attention maps; the caller refuses
both (`attention.longformer_self_attention`).
Under the sequence axis (inside `jax.shard_map`) each device runs the kernel on its own slice, its
neighbours' edge keys fetched with `lax.ppermute` as the xla path fetches its halo blocks.

Shapes: b batch, n length (m padded to the block), h heads, d head dim, g global slots (G padded).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec as P

from led_flax.parallel.sharding import RULES

BLOCK = 128  # the kernel's query and key block (a TPU lane tile); lengths are padded to it
REAL, PADDING, HIDDEN = 0, 1, 2  # segment ids: HIDDEN is carried by keys only, so no query sees them


class BandWithGlobalColumns(mask_lib._ComputableMask):  # noqa: SLF001 (MaxText subclasses it too)
    """One head's [m, kv] mask: key column c is open to query row r when c < G (a global slot) or
    r + offset - w <= c <= r + offset + w (`LocalMask`'s band, shifted by `offset`: G, plus the w keys
    of the previous shard when the sequence is split over devices). The function runs on numpy blocks
    when the kernel is built (to find the empty blocks) and on jax arrays inside the kernel."""

    def __init__(self, length: int, keys: int, num_global: int, offset: int, one_sided: int):
        self.length, self.keys, self.num_global = length, keys, num_global
        self.offset, self.one_sided = offset, one_sided
        band = mask_lib.LocalMask((length, keys), (one_sided, one_sided), offset=offset).mask_function

        def band_with_global_columns(q_ids, kv_ids):  # [rows, cols] int positions -> [rows, cols] bool
            return band(q_ids, kv_ids) | (kv_ids < num_global) if num_global else band(q_ids, kv_ids)

        super().__init__(shape=(length, keys), mask_function=band_with_global_columns)

    def _key(self):
        return self.length, self.keys, self.num_global, self.offset, self.one_sided

    def __eq__(self, other):  # the base class raises on both; the kernel's jit cache hashes masks
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
        return hash((type(self).__name__,) + self._key())


@functools.lru_cache(maxsize=32)
def _kernel(length: int, keys: int, num_global: int, offset: int, one_sided: int, heads: int, interpret: bool):
    """The splash kernel for one example, [h, m, d] queries against [h, keys, d] keys and values (built
    on the host once per shape: the block map is numpy work over the whole mask)."""
    mask = splash.MultiHeadMask([BandWithGlobalColumns(length, keys, num_global, offset, one_sided)] * heads)
    sizes = splash.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                              block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)
    with jax.ensure_compile_time_eval():  # its block map as concrete arrays, not tracers of the first caller
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


class KernelSharding(NamedTuple):
    """How `jax.shard_map` splits the kernel's arguments over the context mesh."""

    mesh: Any  # the context's (abstract) mesh
    axes: frozenset[str]  # the mesh axes the shard_map makes manual: every one not manual already
    batch_axes: tuple[str, ...] | None  # of those, the axes the examples go over (None: whole on every device)
    head_axis: str | None  # the axis the heads go over (None: whole)
    # inside the sequence axis's shard_map: the heads are gathered back before the output leaves
    gather_heads: bool


def _kernel_sharding(batch: int, heads: int) -> KernelSharding | None:
    """The context mesh and how the kernel's call is split over it: Mosaic kernels cannot be
    partitioned automatically, so every axis of the mesh that is not manual yet (inside the sequence
    axis's shard_map, the others) becomes manual around the call, even of size 1; the batch goes over
    the batch axes and the heads over the tensor axis (`parallel.sharding.RULES`), each where it
    divides, and every other axis holds copies. None without a mesh, or with every axis manual."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.auto_axes:
        return None
    auto = set(mesh.auto_axes)
    # Inside the sequence axis's shard_map (some axes manual already), XLA's SPMD partitioner aborts
    # ("Check failed: partition_group_list...", on 8 CPU devices, data x sequence x tensor = 2 x 2 x 2)
    # when the kernel's examples are split over the batch axes (in generation), or its heads stay split
    # on the way out (the global rows' scatter): there the examples stay whole, and the heads are split
    # for the kernel and gathered back after it.
    inside = bool(mesh.manual_axes)
    rules = dict(RULES)
    batch_axes, size = [], 1
    for axis in () if inside else rules["act_batch"]:
        if axis in auto and mesh.shape[axis] > 1 and batch % (size * mesh.shape[axis]) == 0:
            batch_axes.append(axis)
            size *= mesh.shape[axis]
    head_axis = rules["heads"]
    if head_axis not in auto or mesh.shape[head_axis] == 1 or heads % mesh.shape[head_axis]:
        head_axis = None
    return KernelSharding(mesh, frozenset(auto), tuple(batch_axes) or None, head_axis,
                          gather_heads=inside and head_axis is not None)


def _neighbours(x, width: int, sequence_axis: str, ends):
    """x: [b, n, ...] this shard's rows -> (the previous shard's last `width` rows, the next shard's
    first `width` rows), each [b, width, ...]; `ends` past the ends of the sequence (`lax.ppermute`,
    the exchange the xla path makes for its halo blocks)."""
    size, me = jax.lax.axis_size(sequence_axis), jax.lax.axis_index(sequence_axis)
    prev = jax.lax.ppermute(x[:, -width:], sequence_axis, [(i, i + 1) for i in range(size - 1)])
    nxt = jax.lax.ppermute(x[:, :width], sequence_axis, [(i + 1, i) for i in range(size - 1)])
    return jnp.where(me == 0, ends, prev), jnp.where(me == size - 1, ends, nxt)


def splash_attention(q, k, v, *, one_sided: int, key_mask, query_mask, global_k=None, global_v=None,
                     global_mask=None, sequence_axis: str | None = None):
    """Banded attention of every row plus the global keys, in one splash kernel call per layer.

    Same contract as `attention.sliding_window_attention` without dropout or probabilities:
    q, k, v: [b, n, h, d] (q already scaled); one_sided: w, half the window; key_mask: [b, n] True for
    keys allowed in the band (real and not global); query_mask: [b, n] False for padding rows (zeros
    out); global_k, global_v: [b, g, h, d] the global tokens' ordinary keys/values, global_mask [b, g].
    Returns out [b, n, h, d] in q's dtype (the kernel's softmax runs in float32).

    sequence_axis: inside `jax.shard_map` over this mesh axis, n is this device's slice of the
    sequence (whole blocks of w, as the xla path requires); the w keys and values on each side of it
    come from the neighbouring devices (`lax.ppermute`) and sit between the global slots and the
    slice, so one kernel call still covers the band and the global columns.

    Keys and values, per example: [G global slots | the previous shard's w | the n of this one | the
    next shard's w | padding], the halos empty (width 0) unsharded; the band's column offset is G plus
    the halo width. On TPU the Pallas kernel runs compiled; on any other backend in interpret mode
    (plain XLA ops, for tests: slow). The choice is `lax.platform_dependent`, so a program lowered for
    TPU from a CPU holds the kernel's custom call.
    """
    b, n, h, d = q.shape
    w = one_sided
    halo = 0 if sequence_axis is None else w
    g = 0 if global_k is None else global_k.shape[1]
    G, m = _round_up(g, BLOCK), _round_up(n, BLOCK)
    keys = G + _round_up(m + 2 * halo, BLOCK)  # every padded query row keeps its own (padding) key column
    q = jnp.pad(q, [(0, 0), (0, m - n), (0, 0), (0, 0)])  # [b, m, h, d]
    q_ids = jnp.where(jnp.pad(query_mask, [(0, 0), (0, m - n)]), REAL, PADDING).astype(jnp.int32)  # [b, m]
    kv_ids = jnp.where(key_mask, REAL, jnp.where(query_mask, HIDDEN, PADDING)).astype(jnp.int32)  # [b, n]
    if halo:  # the neighbours' edge keys: [b, w, h, d] and [b, w] on each side, hidden past the sequence's ends
        (k_prev, k_next), (v_prev, v_next) = (_neighbours(x, w, sequence_axis, 0) for x in (k, v))
        ids_prev, ids_next = _neighbours(kv_ids, w, sequence_axis, HIDDEN)
        k, v = (jnp.concatenate(parts, axis=1) for parts in ((k_prev, k, k_next), (v_prev, v, v_next)))
        kv_ids = jnp.concatenate([ids_prev, kv_ids, ids_next], axis=1)  # [b, n + 2w]
    tail = keys - G - (n + 2 * halo)
    k, v = (jnp.pad(x, [(0, 0), (0, tail), (0, 0), (0, 0)]) for x in (k, v))  # [b, keys - G, h, d]
    kv_ids = jnp.pad(kv_ids, [(0, 0), (0, tail)], constant_values=PADDING)
    if G:
        slots = [(0, 0), (0, G - g), (0, 0), (0, 0)]
        k = jnp.concatenate([jnp.pad(global_k.astype(k.dtype), slots), k], axis=1)  # [b, keys, h, d]
        v = jnp.concatenate([jnp.pad(global_v.astype(v.dtype), slots), v], axis=1)
        slot_ids = jnp.where(jnp.pad(global_mask, [(0, 0), (0, G - g)]), REAL, HIDDEN).astype(jnp.int32)  # [b, G]
        kv_ids = jnp.concatenate([slot_ids, kv_ids], axis=1)  # [b, keys]
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [b, t, h, d] -> [b, h, t, d]

    def run(q, k, v, q_ids, kv_ids):  # [b', h', m, d], [b', h', keys, d] ... -> [b', h', m, d]: this device's share
        def call(interpret):
            def per_example(q, k, v, q_ids, kv_ids):  # [h', m, d], [h', keys, d], [m], [keys]
                kernel = _kernel(m, keys, G, G + halo, w, q.shape[0], interpret)
                return kernel(q, k, v, segment_ids=splash.SegmentIds(q_ids, kv_ids))
            return lambda *a: jax.vmap(per_example)(*a)

        return jax.lax.platform_dependent(q, k, v, q_ids, kv_ids, tpu=call(False), default=call(True))

    split = _kernel_sharding(b, h)
    if split is not None:
        heads_spec, ids_spec = P(split.batch_axes, split.head_axis, None, None), P(split.batch_axes, None)
        out_spec = heads_spec
        if split.gather_heads:  # [b, h', m, d] -> [b, h, m, d]
            local, out_spec = run, P(split.batch_axes, None, None, None)
            run = lambda *a: jax.lax.all_gather(local(*a), split.head_axis, axis=1, tiled=True)
        run = jax.shard_map(run, mesh=split.mesh, in_specs=(heads_spec,) * 3 + (ids_spec,) * 2,
                            out_specs=out_spec, axis_names=set(split.axes), check_vma=False)
    out = run(heads_first(q), heads_first(k), heads_first(v), q_ids, kv_ids)  # [b, h, m, d]
    out = heads_first(out)[:, :n]  # [b, n, h, d]
    return jnp.where(query_mask[:, :, None, None], out, 0).astype(q.dtype)
