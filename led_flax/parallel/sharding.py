"""Logical axis names for LED's parameters and activations, and the one table that maps them to mesh axes.

The mesh has four axes: `data` (batch only), `fsdp` (batch, and every parameter's model dimension, so
each device keeps 1/fsdp of the weights and optimizer state), `sequence` (one document's tokens, see
`led_flax/sequence.py`) and `tensor` (heads, feed-forward and vocabulary columns, Megatron style). A parameter gets its logical names from its path (`PARAM_AXES`);
`RULES` maps logical names to mesh axes; nothing else in the library names a mesh axis. A dimension
that a mesh axis does not divide stays whole on that axis (and `dry_run` reports it), so any LED
shape runs on any mesh.
"""

from __future__ import annotations

import math
import re
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from led_flax.utils.trees import path_of

MESH_AXES = ("data", "fsdp", "sequence", "tensor")

# logical axis -> mesh axes (None: replicated). The one table; flax's `nn.logical_axis_rules` takes it
# as it is, for the activation constraints.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),   # examples: split over every data-parallel device
    ("embed", "fsdp"),             # a parameter's d_model dimension: FSDP shards it
    ("heads", "tensor"),           # attention projections' output columns (heads x head_dim)
    ("mlp", "tensor"),             # feed-forward columns
    ("vocab", "tensor"),           # embedding rows, LM-head columns
    ("positions", None),
    ("classes", None),
    ("layers", None),              # the leading layer axis of scanned (stacked) parameters: whole
    ("act_batch", ("data", "fsdp")),  # activations: batch split, model dimension whole
    ("act_length", "sequence"),   # one document's tokens over the sequence axis (led_flax/sequence.py)
    ("act_embed", None),
    ("act_vocab", "tensor"),
)

# parameter path (regex on the '/'-joined path) -> logical axes, first match wins
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"final_logits_bias$", (None, "vocab")),
    (r"(shared|embed_tokens)/embedding$", ("vocab", "embed")),
    (r"embed_positions/embedding$", ("positions", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(query|key|value|query_global|key_global|value_global|q_proj|k_proj|v_proj)/kernel$", ("embed", "heads")),
    (r"(query|key|value|query_global|key_global|value_global|q_proj|k_proj|v_proj)/bias$", ("heads",)),
    (r"self_attn/output/kernel$|attn/out_proj/kernel$", ("heads", "embed")),
    (r"fc1/kernel$|classification_head/dense/kernel$", ("embed", "mlp")),
    (r"fc1/bias$|classification_head/dense/bias$", ("mlp",)),
    (r"fc2/kernel$", ("mlp", "embed")),
    (r"(classification_head/out_proj|qa_outputs)/kernel$", ("embed", "classes")),
    (r"(classification_head/out_proj|qa_outputs)/bias$", ("classes",)),
    (r"(bias|scale)$", ("embed",)),  # output biases and LayerNorms
)


class ShardingError(ValueError):
    """A mesh that does not fit the devices, or a parameter without logical names."""


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None, *, sequence: int = 1) -> Mesh:
    """A (data, fsdp, sequence, tensor) mesh over all devices (all processes'); -1 on one axis fills it.
    Devices are laid out so that each process's devices form a contiguous block, and a sequence group's
    devices are neighbours. Raises ShardingError when the sizes do not fit the devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, sequence, tensor]
    if sizes.count(-1) > 1:
        raise ShardingError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ShardingError(f"{len(devices)} devices do not divide into the fixed axes' {known}; "
                                f"set mesh sizes whose product divides the device count")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ShardingError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but there are "
                            f"{len(devices)}; make data x fsdp x sequence x tensor equal the device count (or set "
                            f"data: -1)")
    # devices in process order, so that each process's devices form a contiguous block of the batch axis
    order = sorted(devices, key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(order).reshape(sizes), MESH_AXES)


def data_group(mesh: Mesh) -> tuple[int, int]:
    """(this process's group, the number of groups): processes whose devices hold the same batch rows
    (the same data x fsdp coordinates) form one group and must read the same examples, each giving
    its devices their slice of the tokens. Without a sequence axis across processes, each process is
    its own group, numbered by process index."""
    batch_axes = [MESH_AXES.index(a) for a in ("data", "fsdp")]
    rows_of = {}
    for coords in np.ndindex(mesh.devices.shape):
        device = mesh.devices[coords]
        rows_of.setdefault(device.process_index, set()).add(tuple(coords[a] for a in batch_axes))
    groups = sorted({tuple(sorted(v)) for v in rows_of.values()})
    return groups.index(tuple(sorted(rows_of[jax.process_index()]))), len(groups)


STACKED = re.compile(r"/scan_\d+_\d+/")  # a scanned run's parameters carry a leading layer axis


QUANTIZED = re.compile(r"/(kernel|embedding)/(values|scales)$")  # a quantize.QuantizedArray's two arrays


def _quantized_axes(path: str, ndim: int, stacked: bool):
    """A quantized matrix's values [O, I] and scales [O] or [O, groups] take the axes of the float
    parameter they stand for (kernel [I, O] transposed; an embedding is already [O, I]); the groups
    axis stays whole. These rules come before the LayerNorm `scale` rule, which would otherwise match."""
    parent, kind = path.rsplit("/", 1)
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, parent):
            out_in = axes[::-1] if parent.endswith("kernel") else axes
            axes = out_in if kind == "values" else (out_in[0],) if ndim - stacked == 1 else (out_in[0], None)
            return (("layers",) if stacked else ()) + tuple(axes)
    return None


def logical_axes(params):
    """The tree of logical axis tuples for a parameter tree (arrays or ShapeDtypeStructs); a parameter
    of a scanned run (`stacking.py`) gets `layers` first."""
    def one(keys, leaf):
        path = path_of(keys)
        if QUANTIZED.search(path):
            axes = _quantized_axes(path, len(leaf.shape), bool(STACKED.search(path)))
            if axes is not None and len(axes) == len(leaf.shape):
                return axes
            raise ShardingError(f"no logical axes for quantized parameter {path} of shape {tuple(leaf.shape)}; add "
                                f"a rule for its float parameter to led_flax.parallel.sharding.PARAM_AXES")
        for pattern, axes in PARAM_AXES:
            if re.search(pattern, path):
                if STACKED.search(path):
                    axes = ("layers",) + axes
                if len(axes) != len(leaf.shape):
                    break
                return axes
        raise ShardingError(f"no logical axes for parameter {path} of shape {tuple(leaf.shape)}; add a rule "
                            f"to led_flax.parallel.sharding.PARAM_AXES")
    return jax.tree_util.tree_map_with_path(one, params)


def _mesh_axes(name: str | None):
    if name is None:
        return None
    for logical, mesh_axes in RULES:
        if logical == name:
            return mesh_axes
    raise ShardingError(f"logical axis {name!r} is not in led_flax.parallel.sharding.RULES")


def _split_axes(name: str | None, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that the logical axis `name` is split over."""
    mesh_axes = _mesh_axes(name)
    group = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    return tuple(a for a in group if mesh.shape[a] > 1)


def spec_for(axes, shape, mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec for logical `axes` of an array of `shape`; a dimension its mesh axes do not
    divide is kept whole."""
    out = []
    for name, size in zip(axes, shape):
        group = _split_axes(name, mesh)
        if group and size % math.prod(mesh.shape[a] for a in group) == 0:
            out.append(group[0] if len(group) == 1 else group)
        else:
            out.append(None)
    return PartitionSpec(*out)


def param_shardings(params, mesh: Mesh):
    """NamedShardings for every parameter (or any tree with the parameters' structure at its leaves)."""
    axes = logical_axes(params)
    return jax.tree_util.tree_map(lambda a, p: NamedSharding(mesh, spec_for(a, p.shape, mesh)), axes, params,
                                  is_leaf=lambda x: isinstance(x, tuple))


def batch_spec(ndim: int, batch_axis: int = 0, tokens: bool = False) -> PartitionSpec:
    """Batch arrays: the example axis over data and fsdp; with `tokens` (encoder inputs, the last axis
    their tokens) the tokens over the sequence axis; the rest whole."""
    spec = [None] * ndim
    spec[batch_axis] = _mesh_axes("batch")
    if tokens:
        spec[-1] = _mesh_axes("act_length")
    return PartitionSpec(*spec)


def kept_whole(params, mesh: Mesh) -> list[str]:
    """Parameter dimensions whose logical axis maps to a mesh axis of size > 1 that does not divide them."""
    out = []
    axes = logical_axes(params)
    for (keys, leaf), names in zip(jax.tree_util.tree_leaves_with_path(params),
                                   jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        spec = spec_for(names, leaf.shape, mesh)
        for name, size, got in zip(names, leaf.shape, spec):
            if got is None and _split_axes(name, mesh):
                out.append(f"{path_of(keys)} {name}={size}")
    return out


def bytes_per_device(tree, shardings) -> tuple[int, int]:
    """(bytes on each device, bytes in all) of a tree of arrays or ShapeDtypeStructs placed with
    `shardings` (the largest shard, where shards differ)."""
    per_device = total = 0
    for leaf, sharding in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings)):
        item = np.dtype(leaf.dtype).itemsize
        total += math.prod(leaf.shape) * item
        per_device += math.prod(sharding.shard_shape(tuple(leaf.shape))) * item
    return per_device, total
