"""Nested dicts of arrays (parameter trees, records) as flat {"a/b/c": leaf} maps and back, and jax
key paths as the same '/'-joined names."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def flatten(tree: Mapping, sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}; a leaf is anything that is not a mapping."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, path + sep))
        else:
            out[path] = v
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """{"a/b": x} -> {"a": {"b": x}}."""
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def path_of(keys) -> str:
    """A key path (from `jax.tree_util.tree_leaves_with_path`) as a '/'-joined string: 'led/shared/embedding'."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def non_finite(flat: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point leaves of a flat map that hold a NaN or an infinity, sorted
    (integer leaves, such as quantized values, are skipped). Leaves are numpy arrays of any float
    dtype, bfloat16 included."""
    bad = []
    for name, value in flat.items():
        array = np.asarray(value)
        if array.dtype.kind in "biu" or array.dtype == object:
            continue
        if array.dtype.kind != "f" and array.dtype.kind != "c":  # ml_dtypes' bfloat16, float8: kind 'V'
            array = array.astype(np.float32)
        if not np.isfinite(array).all():
            bad.append(name)
    return sorted(bad)
