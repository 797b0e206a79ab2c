"""The decoder's static-shape cache for step-by-step generation, as a typed pytree that owns its layout.

Per decoder layer it holds the self-attention keys and values written so far and the cross-attention
keys and values of the encoder output (computed once). With beam search the self-attention rows are
`beams` consecutive rows per input, and the cross-attention rows are one per input, shared by its
beams. Beam search only calls `reorder`; it never reads the fields.

`layers` is a tuple of `LayerCache` (one per layer), or a single `LayerCache` whose arrays carry a
leading layer axis (a scanned decoder); `reorder` and `write_self` work on either, as they address
axes from the end.

Shapes: B = batch x beams, b batch, h heads, s cache positions, n encoder length, d head dim.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

_BATCH_AXIS = -4  # [..., B, h, s, d]
_POSITION_AXIS = -2


@struct.dataclass
class LayerCache:
    self_k: Any  # [..., B, h, s, d]: self-attention keys written so far
    self_v: Any  # [..., B, h, s, d]
    cross_k: Any  # [..., b, h, n, d]: cross-attention keys of the encoder output
    cross_v: Any  # [..., b, h, n, d]

    def write_self(self, k, v, index) -> "LayerCache":
        """Writes this step's keys and values k, v [B, h, t, d] at positions index .. index + t."""
        def put(buf, new):
            at = [jnp.zeros_like(index)] * buf.ndim
            at[_POSITION_AXIS] = index
            return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), tuple(at))
        return self.replace(self_k=put(self.self_k, k), self_v=put(self.self_v, v))


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
            return jnp.take(x, rows, axis=x.ndim + _BATCH_AXIS)
        def one(layer: LayerCache) -> LayerCache:
            return layer.replace(self_k=take(layer.self_k), self_v=take(layer.self_v))
        layers = tuple(map(one, self.layers)) if isinstance(self.layers, tuple) else one(self.layers)
        return self.replace(layers=layers)
