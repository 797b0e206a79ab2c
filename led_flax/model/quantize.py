"""Weight-only quantization: int8 with a scale per output channel, int4 and nf4 with a scale per group of
`group_size` inputs; the products that apply them; and the walk over a parameter tree.

A quantized matrix is a `QuantizedArray`: integer `values` stored [out, in] (the PyTorch weight layout:
the tied LM head is the embedding table itself, [vocab, d_model]) and float `scales`; its scheme and
group size are static. In a parameter tree it stands where the float leaf stood (`fc1/kernel`,
`shared/embedding`), so modules find it by name; on disk it is the two arrays `kernel/values` and
`kernel/scales`, and `led_flax.json` records the `QuantizeSpec`.

How the products are written matters more than the bytes (jax 0.10 on a CPU, measured in
BENCHMARKS.md). Up to `ROW_LIMIT` rows, int8 weights are applied as an elementwise multiply and a sum
over the input axis, which XLA fuses into one pass over the int8 bytes; written as a `dot`, the int8
-> float conversion is materialised as a full float copy first. Inside generation's `while_loop`, XLA
moves any conversion of a loop-invariant weight out of the loop (a float copy of every weight, held
for the whole generation), so each product ties the weight to its input with an optimization barrier.
More rows (the encoder), and the 4-bit schemes, dequantize and `dot`.

Shapes: r rows, O outputs, I inputs, G group size; a leading layer axis (scanned layers) is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from led_flax.utils.trees import path_of

SCHEMES = ("int8", "int4", "nf4")
DEFAULT_GROUP_SIZE = 64
ROW_LIMIT = 16  # products over at most this many rows multiply and sum; more rows dequantize and dot

# NormalFloat-4 (QLoRA, Dettmers et al. 2023, arXiv:2305.14314): bitsandbytes' get_4bit_type("nf4"),
# index 0..15. Stored as int4 code - 8 (orbax cannot write uint4).
NF4_CODE_BOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)


class QuantizationError(ValueError):
    """A quantized model where a float one is needed (or the reverse); the message names the fix."""


@struct.dataclass
class QuantizedArray:
    """A matrix W [..., O, I] as integers and scales: W ≈ values * scales (per group).

    values: [..., O, I] int8 (int8 scheme), int4 (int4: -7..7) or int4 nf4 codes - 8.
    scales: [..., O] float32 (int8), or [..., O, ceil(I / G)] (int4, nf4; bfloat16).
    """

    values: Any
    scales: Any
    scheme: str = struct.field(pytree_node=False, default="int8")
    group_size: int = struct.field(pytree_node=False, default=0)  # 0: one scale per output channel

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def dequantize(self, dtype=jnp.float32):
        """W [..., O, I] in `dtype`."""
        return _dequantize(self.values, self.scales, self.scheme, self.group_size, dtype)

    def take_rows(self, ids, dtype=jnp.float32):
        """Rows of W at ids [...] -> [..., I] in `dtype` (an embedding lookup)."""
        values = jnp.take(self.values, ids, axis=0)  # [..., I]: only the rows read are converted
        scales = jnp.take(self.scales, ids, axis=0)
        return _dequantize(values, scales, self.scheme, self.group_size, dtype)

    @property
    def nbytes(self) -> float:
        """Bytes held, a 4-bit value counted as half a byte (XLA packs them in memory)."""
        return array_bytes(self.values) + array_bytes(self.scales)


def array_bytes(x) -> float:
    """Bytes of an array (or ShapeDtypeStruct), 4-bit types at half a byte per value."""
    bits = 4 if jnp.dtype(x.dtype) in (jnp.dtype(jnp.int4), jnp.dtype(jnp.uint4)) else 8 * jnp.dtype(x.dtype).itemsize
    return math.prod(x.shape) * bits / 8


def _dequantize(values, scales, scheme: str, group_size: int, dtype):
    if scheme == "nf4":
        w = jnp.take(jnp.asarray(NF4_CODE_BOOK), values.astype(jnp.int32) + 8)
    else:
        w = values.astype(jnp.float32)
    if group_size:  # [..., I] * [..., ceil(I / G)] repeated G times
        scales = jnp.repeat(scales.astype(jnp.float32), group_size, axis=-1)[..., :values.shape[-1]]
    else:
        scales = scales.astype(jnp.float32)[..., None]
    return (w * scales).astype(dtype)


def quantize_matrix(w, scheme: str, group_size: int = DEFAULT_GROUP_SIZE) -> QuantizedArray:
    """W [..., O, I] (float) -> QuantizedArray. int8: symmetric, absmax / 127 per output channel.
    int4: symmetric, absmax / 7 per group of `group_size` inputs (a last, shorter group when G does
    not divide I). nf4: per group, W / absmax rounded to the nearest code of NF4_CODE_BOOK.
    Raises ValueError for an unknown scheme or a group size below 1."""
    check_scheme(scheme)
    w = jnp.asarray(w, jnp.float32)
    if scheme == "int8":
        absmax = jnp.max(jnp.abs(w), axis=-1)  # [..., O]
        scales = jnp.where(absmax > 0, absmax / 127, 1.0)
        values = jnp.clip(jnp.round(w / scales[..., None]), -127, 127).astype(jnp.int8)
        return QuantizedArray(values=values, scales=scales, scheme=scheme, group_size=0)
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    i = w.shape[-1]
    groups = -(-i // group_size)
    padded = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, groups * group_size - i)])
    grouped = padded.reshape(w.shape[:-1] + (groups, group_size))  # [..., O, I/G, G]
    absmax = jnp.max(jnp.abs(grouped), axis=-1)  # [..., O, I/G]
    if scheme == "int4":
        scales = jnp.where(absmax > 0, absmax / 7, 1.0)
        values = jnp.clip(jnp.round(grouped / scales[..., None]), -7, 7)
    else:  # nearest code: the index of the first midpoint above the value
        scales = jnp.where(absmax > 0, absmax, 1.0)
        book = jnp.asarray(NF4_CODE_BOOK)
        values = jnp.searchsorted((book[1:] + book[:-1]) / 2, grouped / scales[..., None]) - 8
    values = values.reshape(padded.shape)[..., :i].astype(jnp.int4)
    return QuantizedArray(values=values, scales=scales.astype(jnp.bfloat16), scheme=scheme, group_size=group_size)


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    return scheme


# ---------------------------------------------------------------------------------------------- products
def tie(values, x):
    """(values, x) through one optimization barrier: inside a while_loop, XLA can then not move the
    conversion of a loop-invariant weight out of the loop; and products that read the same x through
    their own barriers are not fused as siblings (XLA would write the broadcast x [O, I, r] out once
    for all of them, self-attention's q, k and v). A no-op outside a loop."""
    return jax.lax.optimization_barrier((values, x))


def dense(x, w: QuantizedArray, dtype):
    """x [..., I] times W [O, I] transposed -> [..., O] in `dtype` (no bias).

    int8 over at most ROW_LIMIT rows: multiply and sum in float32, the scale applied to the output
    (one row as a vector: a [1, ...] multiply-sum is pathologically slow). Otherwise W is dequantized
    to `dtype` and multiplied with a dot."""
    lead, i = x.shape[:-1], x.shape[-1]
    r = math.prod(lead)
    rows = x.reshape(r, i)  # [r, I]
    values, rows = tie(w.values, rows)
    if w.scheme == "int8" and r <= ROW_LIMIT:
        wf, xf = values.astype(jnp.float32), rows.astype(jnp.float32)
        if r == 1:
            y = ((wf * xf[0]).sum(-1) * w.scales)[None]  # [1, O]
        else:
            y = ((wf[:, :, None] * xf.T[None]).sum(1) * w.scales[:, None]).T  # [O, I, r] summed over I -> [r, O]
    else:
        weight = _dequantize(values, w.scales, w.scheme, w.group_size, dtype)  # [O, I]
        y = jax.lax.dot_general(rows.astype(dtype), weight, (((1,), (1,)), ((), ())))  # [r, O]
    return y.astype(dtype).reshape(lead + (w.shape[-2],))


def concatenate_outputs(ws: list[QuantizedArray]) -> QuantizedArray:
    """Matrices W_k [O_k, I] of one scheme and group size as one [sum O_k, I] (their scales follow
    the output rows), so one product serves them all (`layers.fused_dense`)."""
    first = ws[0]
    if any((w.scheme, w.group_size) != (first.scheme, first.group_size) for w in ws):
        raise ValueError("matrices of different quantization schemes cannot be joined")
    return QuantizedArray(values=jnp.concatenate([w.values for w in ws], axis=-2),
                          scales=jnp.concatenate([w.scales for w in ws], axis=-2 if first.group_size else -1),
                          scheme=first.scheme, group_size=first.group_size)


def kernel_of(w, dtype):
    """A flax kernel [I, O] in `dtype`, from a float kernel or a QuantizedArray (dequantized)."""
    return w.dequantize(dtype).T if isinstance(w, QuantizedArray) else jnp.asarray(w, dtype)


def quantized_param(module, name: str):
    """The module's parameter `name` when it is a QuantizedArray, else None (the caller then creates
    or reads it with `module.param` as usual, whose shape check a QuantizedArray would fail)."""
    if module.has_variable("params", name):
        value = module.get_variable("params", name)
        if isinstance(value, QuantizedArray):
            return value
    return None


# ---------------------------------------------------------------------------------------------- trees
@dataclasses.dataclass(frozen=True)
class QuantizeSpec:
    """What a quantized checkpoint holds (recorded in led_flax.json).

    scheme: the encoder and decoder kernels' scheme (int8 | int4 | nf4). group_size: inputs per scale
    for int4/nf4. embedding: the scheme of the token embeddings and the LM head (default int8: 4-bit
    products over the 50,265-row head are several times slower than float32 on a CPU, see
    BENCHMARKS.md). encoder: quantize the encoder's kernels too (else they stay float). positions: the
    storage dtype of the position tables. LayerNorms and biases always stay float.
    Raises ValueError for an unknown scheme or dtype or a group size below 1."""

    scheme: str
    group_size: int = DEFAULT_GROUP_SIZE
    embedding: str = "int8"
    encoder: bool = True
    positions: str = "bfloat16"

    def __post_init__(self):
        check_scheme(self.scheme)
        check_scheme(self.embedding)
        if self.scheme == "int8" and self.embedding == "int8":  # per channel: no groups, so one spec
            object.__setattr__(self, "group_size", DEFAULT_GROUP_SIZE)
        if self.group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {self.group_size}")
        if self.positions not in ("float32", "bfloat16"):
            raise ValueError(f"positions must be float32 or bfloat16, got {self.positions!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "QuantizeSpec":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def describe(self) -> str:
        groups = f", groups of {self.group_size}" if self.scheme != "int8" else ""
        encoder = "" if self.encoder else ", encoder float"
        return f"{self.scheme}{groups}, embedding/LM head {self.embedding}{encoder}, positions {self.positions}"


_EMBEDDING = re.compile(r"(^|/)(shared|embed_tokens)/embedding$|(^|/)lm_head/kernel$")
_POSITIONS = re.compile(r"(^|/)embed_positions/embedding$")
_KERNEL = re.compile(r"(^|/)(encoder|decoder)/(layers_\d+|scan_\d+_\d+)/.*kernel$")


def role_of(path: str, spec: QuantizeSpec) -> str | None:
    """How `spec` treats the parameter at `path` ('a/b/c'): 'embedding', 'kernel', 'positions' or None."""
    if _EMBEDDING.search(path):
        return "embedding"
    if _POSITIONS.search(path):
        return "positions"
    if _KERNEL.search(path) and (spec.encoder or "/decoder/" in f"/{path}"):
        return "kernel"
    return None


def quantize_params(params, spec: QuantizeSpec):
    """A float parameter tree (either layer layout) -> the tree with its kernels and embeddings as
    QuantizedArrays and its position tables in `spec.positions`. Traceable: jax.eval_shape of it gives
    the quantized tree's shapes. Raises QuantizationError for a tree that is already quantized."""
    if is_quantized(params):
        raise QuantizationError("the parameters are already quantized; quantize a float checkpoint")

    def one(keys, leaf):
        path = path_of(keys)
        role = role_of(path, spec)
        if role == "positions":
            return jnp.asarray(leaf).astype(spec.positions)
        if role is None:
            return leaf
        w = jnp.asarray(leaf)
        if path.endswith("kernel"):  # a flax kernel [..., I, O] -> W [..., O, I]
            w = jnp.swapaxes(w, -1, -2)
        return quantize_matrix(w, spec.scheme if role == "kernel" else spec.embedding, spec.group_size)

    return jax.tree_util.tree_map_with_path(one, params)


def dequantize_params(params, dtype=jnp.float32):
    """A quantized tree -> a float tree of the original layout (kernels [I, O]), every floating leaf in
    `dtype`: what exporting a quantized checkpoint as float writes (the quantization error stays)."""
    def one(keys, leaf):
        if isinstance(leaf, QuantizedArray):
            w = leaf.dequantize(dtype)
            return np.asarray(jnp.swapaxes(w, -1, -2) if path_of(keys).endswith("kernel") else w)
        return np.asarray(leaf).astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf
    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, QuantizedArray))


def is_quantized(params) -> bool:
    return any(isinstance(x, QuantizedArray) for x in
               jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, QuantizedArray)))


def to_saved(params):
    """QuantizedArrays -> {'values', 'scales'} dicts: the tree as written to disk."""
    return jax.tree_util.tree_map(lambda x: {"values": x.values, "scales": x.scales} if isinstance(x, QuantizedArray)
                                  else x, params, is_leaf=lambda x: isinstance(x, QuantizedArray))


def from_saved(params, spec: QuantizeSpec):
    """The tree as read from disk ({'values', 'scales'} dicts) -> QuantizedArrays, their schemes from
    `spec` by path. Raises QuantizationError when a quantized leaf is not where `spec` puts one."""
    def walk(node, path):
        if isinstance(node, Mapping) and set(node) == {"values", "scales"}:
            role = role_of(path, spec)
            if role not in ("embedding", "kernel"):
                raise QuantizationError(f"{path} is stored quantized but led_flax.json's quantization "
                                        f"({spec.describe()}) keeps it float; the checkpoint is damaged: write it again")
            scheme = spec.scheme if role == "kernel" else spec.embedding
            return QuantizedArray(values=node["values"], scales=node["scales"], scheme=scheme,
                                  group_size=0 if scheme == "int8" else spec.group_size)
        if isinstance(node, Mapping):
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        return node
    return walk(params, "")


def param_bytes(params) -> float:
    """Bytes a parameter tree holds in memory, 4-bit values counted as half a byte."""
    return sum(array_bytes(x) for x in jax.tree_util.tree_leaves(params))


def check_not_bitsandbytes(hf_config: Mapping[str, Any], source: str) -> None:
    """Raises QuantizationError for an HF config.json quantized by bitsandbytes (or any other
    `quantization_config`): its weights are packed for that library, not LED's float tensors."""
    q = hf_config.get("quantization_config")
    if q:
        method = q.get("quant_method", "a library") if isinstance(q, Mapping) else "a library"
        raise QuantizationError(
            f"{source} was quantized with {method} (config.json has quantization_config); led-flax reads float "
            f"checkpoints: convert the float original, with --quantize int8|int4|nf4 to quantize it here")
