"""The decoder's static-shape cache for step-by-step generation, as a typed pytree that owns its layout.

Per decoder layer it holds the self-attention keys and values written so far and the cross-attention
keys and values of the encoder output (computed once). With beam search the self-attention rows are
`beams` consecutive rows per input, and the cross-attention rows are one per input, shared by its
beams. Beam search only calls `reorder`; it never reads the fields.

`layers` is a tuple of `LayerCache` (one per layer), or a single `LayerCache` whose arrays carry a
leading layer axis (a scanned decoder); `reorder` and `write_self` work on either, as they address
axes from the end.

The cross-attention keys are stored transposed, [b, h, d, n]: the scores product of a decoding step
then runs along contiguous positions, about half the time of the [b, h, n, d] layout at 4,096 inputs
(BENCHMARKS.md). With `int8` they and the values are int8 with a float32 scale per (row, head,
position): a quarter of the bytes each step reads.

Shapes: B = batch x beams, b batch, h heads, s cache positions, n encoder length, d head dim.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from .quantize import quantize_matrix, tie

_BATCH_AXIS = -4  # [..., B, h, s, d]
_POSITION_AXIS = -2
CROSS_CACHES = ("float", "int8")


@struct.dataclass
class KeyValue:
    """Attention keys and values, heads first: what a decoder attention attends to."""

    keys: Any  # [..., b, h, s, d]
    values: Any  # [..., b, h, s, d]

    @property
    def batch(self) -> int:
        return self.values.shape[_BATCH_AXIS]

    def scores(self, q):
        """q [b, h, t, d] -> scores [b, h, t, s]."""
        return jnp.einsum("bhqd,bhsd->bhqs", q, self.keys)

    def mix(self, probs):
        """probs [b, h, t, s] -> [b, h, t, d]: the values weighted by probs."""
        return jnp.einsum("bhqs,bhsd->bhqd", probs, self.values)


@struct.dataclass
class CrossKeyValue:
    """The cross-attention keys and values of the encoder output, cached once for a whole generation,
    in the layout a decoding step reads fastest (the same methods as KeyValue)."""

    keys: Any  # [..., b, h, d, n]: transposed
    values: Any  # [..., b, h, n, d]
    key_scales: Any = None  # [..., b, h, n] float32 when int8, else None
    value_scales: Any = None  # [..., b, h, n]

    @classmethod
    def build(cls, kv: KeyValue, kind: str = "float") -> "CrossKeyValue":
        """From keys and values [..., b, h, n, d]; kind 'int8' quantizes each (row, head, position)'s d
        values with one scale (absmax / 127)."""
        if kind not in CROSS_CACHES:
            raise ValueError(f"cross_cache {kind!r} is not one of {', '.join(CROSS_CACHES)}")
        if kind == "float":
            return cls(keys=jnp.swapaxes(kv.keys, -1, -2), values=kv.values)
        k, v = quantize_matrix(kv.keys, "int8"), quantize_matrix(kv.values, "int8")
        return cls(keys=jnp.swapaxes(k.values, -1, -2), values=v.values, key_scales=k.scales, value_scales=v.scales)

    @property
    def batch(self) -> int:
        return self.values.shape[_BATCH_AXIS]

    def scores(self, q):
        """q [b, h, t, d] -> scores [b, h, t, n] (float32 when int8)."""
        if self.key_scales is None:
            return jnp.einsum("bhqd,bhdn->bhqn", q, self.keys)
        keys, q = tie(self.keys, q)
        keys = keys.astype(q.dtype)  # converted inside the decoding loop, not hoisted out
        # accumulated in float32: unscaled int8 keys (up to 127) would overflow a float16 product
        return jnp.einsum("bhqd,bhdn->bhqn", q, keys, preferred_element_type=jnp.float32) * \
            self.key_scales[:, :, None, :]

    def mix(self, probs):
        """probs [b, h, t, n] -> [b, h, t, d]."""
        if self.value_scales is None:
            return jnp.einsum("bhqn,bhnd->bhqd", probs, self.values)
        values, probs = tie(self.values, probs)
        values = values.astype(probs.dtype)
        scaled = probs.astype(jnp.float32) * self.value_scales[:, :, None, :]  # float32: no half underflow
        return jnp.einsum("bhqn,bhnd->bhqd", scaled, values.astype(jnp.float32)).astype(probs.dtype)


@struct.dataclass
class LayerCache:
    self_k: Any  # [..., B, h, s, d]: self-attention keys written so far
    self_v: Any  # [..., B, h, s, d]
    cross: CrossKeyValue  # the cross-attention keys and values of the encoder output, b rows

    @property
    def self_key_value(self) -> KeyValue:
        return KeyValue(keys=self.self_k, values=self.self_v)

    def write_self(self, kv: KeyValue, index) -> "LayerCache":
        """Writes this step's keys and values [B, h, t, d] at positions index .. index + t."""
        def put(buf, new):
            at = [jnp.zeros_like(index)] * buf.ndim
            at[_POSITION_AXIS] = index
            return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), tuple(at))
        return self.replace(self_k=put(self.self_k, kv.keys), self_v=put(self.self_v, kv.values))


@struct.dataclass
class DecoderCache:
    index: Any  # [] int32: the number of positions written
    layers: Any  # tuple[LayerCache, ...], or one LayerCache with a leading layer axis

    @property
    def max_length(self) -> int:
        """The number of self-attention positions (static)."""
        first = self.layers[0] if isinstance(self.layers, tuple) else self.layers
        return first.self_k.shape[_POSITION_AXIS]

    def layer(self, i: int) -> LayerCache:
        return self.layers[i]

    def advance(self, layers, steps) -> "DecoderCache":
        """The cache after a decoder pass of `steps` tokens that wrote `layers`."""
        return DecoderCache(index=self.index + steps, layers=layers)

    def reorder(self, rows) -> "DecoderCache":
        """The self-attention rows picked by `rows` [B] int (row i of the result is row rows[i]): beam
        search's reordering. Cross-attention keys and values are shared by the beams of an input and
        stay as they are."""
        def take(x):
            # rows come from the search's top-k, always in bounds: no bounds check (a select over the cache)
            index = [slice(None)] * x.ndim
            index[x.ndim + _BATCH_AXIS] = rows
            return x.at[tuple(index)].get(mode="promise_in_bounds")
        def one(layer: LayerCache) -> LayerCache:
            return layer.replace(self_k=take(layer.self_k), self_v=take(layer.self_v))
        layers = tuple(map(one, self.layers)) if isinstance(self.layers, tuple) else one(self.layers)
        return self.replace(layers=layers)
