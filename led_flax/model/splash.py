"""The encoder's band and global columns in one Pallas splash-attention call (TPU; interpret mode on CPU).

Splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) skips every key block its mask
leaves empty, so a band of half-width w costs O(n·w) on a TPU. One call per layer computes what
`attention.sliding_window_attention` computes, the ordinary rows of Longformer's self-attention:

- keys and values are the global tokens' ordinary keys and values, gathered into the first G slots
  (padded to the kernel's block of 128), followed by the sequence's own;
- the mask (`BandWithGlobalColumns`) opens the first G key columns to every query, and after them
  `LocalMask`'s band of w on each side (its offset is G);
- per-example masking is `SegmentIds`, [n] arrays: queries are REAL, or PADDING for padded rows (which
  then see the padding keys of their band, so no row is empty); a key is REAL, PADDING, or HIDDEN (an id
  no query has) when it is an empty global slot or a global token inside the band: the reference
  takes global tokens out of the band and counts them once, as columns (`key_mask = real & ~is_global`).

Why one call: splash's `save_residuals=True` (which returns the logsumexp needed to merge two passes)
has no derivative, so a band pass and a global-column pass merged by their logsumexps could not be
trained. The gradient here is splash's own backward.

The sequence is padded to the kernel's block on top of LED's window padding and cut back after. Under
a mesh (`jax.set_mesh`), `jax.shard_map` goes around the kernel, which the partitioner cannot split: the
batch over the mesh's batch axes and the heads over its tensor axis (`parallel.sharding.RULES`), each
where it divides. Splash has no attention dropout and returns no attention maps; the caller refuses
both (`attention.longformer_self_attention`).

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
    """One head's [m, G + m] mask: key column c is open to query row r when c < G (a global slot) or
    G + r - w <= c <= G + r + w (`LocalMask`'s band, its offset G). The function runs on numpy blocks
    when the kernel is built (to find the empty blocks) and on jax arrays inside the kernel."""

    def __init__(self, length: int, num_global: int, one_sided: int):
        self.length, self.num_global, self.one_sided = length, num_global, one_sided
        band = mask_lib.LocalMask((length, num_global + length), (one_sided, one_sided), offset=num_global).mask_function

        def band_with_global_columns(q_ids, kv_ids):  # [rows, cols] int positions -> [rows, cols] bool
            return band(q_ids, kv_ids) | (kv_ids < num_global) if num_global else band(q_ids, kv_ids)

        super().__init__(shape=(length, num_global + length), mask_function=band_with_global_columns)

    def _key(self):
        return self.length, self.num_global, self.one_sided

    def __eq__(self, other):  # the base class raises on both; the kernel's jit cache hashes masks
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
        return hash((type(self).__name__,) + self._key())


@functools.lru_cache(maxsize=32)
def _kernel(length: int, num_global: int, one_sided: int, heads: int, interpret: bool):
    """The splash kernel for one example, [h, m, d] queries against [h, G + m, d] keys (built on the
    host once per shape: the block map is numpy work over the whole mask)."""
    mask = splash.MultiHeadMask([BandWithGlobalColumns(length, num_global, one_sided)] * heads)
    sizes = splash.BlockSizes(block_q=BLOCK, block_kv=BLOCK, block_kv_compute=BLOCK, block_q_dkv=BLOCK,
                              block_kv_dkv=BLOCK, block_kv_dkv_compute=BLOCK, block_q_dq=BLOCK, block_kv_dq=BLOCK)
    with jax.ensure_compile_time_eval():  # its block map as concrete arrays, not tracers of the first caller
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


class KernelSharding(NamedTuple):
    """How `jax.shard_map` splits the kernel's arguments over the context mesh."""

    mesh: Any  # the context's (abstract) mesh
    batch_axes: tuple[str, ...] | None  # the mesh axes the examples go over (None: whole on every device)
    head_axis: str | None  # the mesh axis the heads go over (None: whole)


def _kernel_sharding(batch: int, heads: int) -> KernelSharding | None:
    """The context mesh and the axes that split the batch and the heads (each where it divides), or
    None without a mesh or with nothing to split."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    rules = dict(RULES)
    batch_axes, size = [], 1
    for axis in rules["act_batch"]:
        if axis in mesh.shape and mesh.shape[axis] > 1 and batch % (size * mesh.shape[axis]) == 0:
            batch_axes.append(axis)
            size *= mesh.shape[axis]
    head_axis = rules["heads"]
    head_axis = head_axis if head_axis in mesh.shape and mesh.shape[head_axis] > 1 and heads % mesh.shape[head_axis] == 0 \
        else None
    if not batch_axes and head_axis is None:
        return None
    return KernelSharding(mesh, tuple(batch_axes) or None, head_axis)


def splash_attention(q, k, v, *, one_sided: int, key_mask, query_mask, global_k=None, global_v=None,
                     global_mask=None):
    """Banded attention of every row plus the global keys, in one splash kernel call per layer.

    Same contract as `attention.sliding_window_attention` without dropout or probabilities:
    q, k, v: [b, n, h, d] (q already scaled); one_sided: w, half the window; key_mask: [b, n] True for
    keys allowed in the band (real and not global); query_mask: [b, n] False for padding rows (zeros
    out); global_k, global_v: [b, g, h, d] the global tokens' ordinary keys/values, global_mask [b, g].
    Returns out [b, n, h, d] in q's dtype (the kernel's softmax runs in float32).

    On TPU the Pallas kernel runs compiled; on any other backend it runs in interpret mode (plain XLA
    ops, for tests: slow). The choice is `lax.platform_dependent`, so a program lowered for TPU from a
    CPU holds the kernel's custom call.
    """
    b, n, h, d = q.shape
    w = one_sided
    g = 0 if global_k is None else global_k.shape[1]
    G, m = _round_up(g, BLOCK), _round_up(n, BLOCK)
    pad_seq = lambda x, value=0: jnp.pad(x, [(0, 0), (0, m - n)] + [(0, 0)] * (x.ndim - 2), constant_values=value)
    q, k, v = (pad_seq(x) for x in (q, k, v))  # [b, m, h, d]
    key_mask, query_mask = pad_seq(key_mask, False), pad_seq(query_mask, False)  # [b, m]
    q_ids = jnp.where(query_mask, REAL, PADDING).astype(jnp.int32)  # [b, m]
    kv_ids = jnp.where(key_mask, REAL, jnp.where(query_mask, HIDDEN, PADDING)).astype(jnp.int32)  # [b, m]
    if G:
        slots = [(0, 0), (0, G - g), (0, 0), (0, 0)]
        k = jnp.concatenate([jnp.pad(global_k.astype(k.dtype), slots), k], axis=1)  # [b, G + m, h, d]
        v = jnp.concatenate([jnp.pad(global_v.astype(v.dtype), slots), v], axis=1)
        slot_ids = jnp.where(jnp.pad(global_mask, [(0, 0), (0, G - g)]), REAL, HIDDEN).astype(jnp.int32)  # [b, G]
        kv_ids = jnp.concatenate([slot_ids, kv_ids], axis=1)  # [b, G + m]
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [b, t, h, d] -> [b, h, t, d]

    def run(q, k, v, q_ids, kv_ids):  # [b', h', m, d] ... -> [b', h', m, d]: this device's examples and heads
        def call(interpret):
            def per_example(q, k, v, q_ids, kv_ids):  # [h', m, d], [h', G + m, d], [m], [G + m]
                return _kernel(m, G, w, q.shape[0], interpret)(q, k, v, segment_ids=splash.SegmentIds(q_ids, kv_ids))
            return lambda *a: jax.vmap(per_example)(*a)

        return jax.lax.platform_dependent(q, k, v, q_ids, kv_ids, tpu=call(False), default=call(True))

    split = _kernel_sharding(b, h)
    if split is not None:
        heads_spec, ids_spec = P(split.batch_axes, split.head_axis, None, None), P(split.batch_axes, None)
        run = jax.shard_map(run, mesh=split.mesh, in_specs=(heads_spec,) * 3 + (ids_spec,) * 2,
                            out_specs=heads_spec, check_vma=False)
    out = run(heads_first(q), heads_first(k), heads_first(v), q_ids, kv_ids)  # [b, h, m, d]
    out = heads_first(out)[:, :n]  # [b, n, h, d]
    return jnp.where(query_mask[:, :n, None, None], out, 0).astype(q.dtype)
