"""Scanned layers: which layers scan together, and the two parameter layouts.

With `scan_layers` (the default), each stack's layers run as `nn.scan` over parameters that carry a
leading layer axis: the compiled program holds one layer body (compile time flat in depth), and the
backward pass keeps one residual per layer whatever the backend's scheduler does. Encoder layers scan
in runs of equal `attention_window` (the window fixes the block shapes); the decoder's layers form one
run. Run [a, b) is the module `scan_{a}_{b-1}`: `encoder/scan_0_5/fc1/kernel` is [6, D, F], where the
unrolled layout has `encoder/layers_0/fc1/kernel` ... `encoder/layers_5/fc1/kernel`, each [D, F].

Checkpoints on disk (ours and HF's) keep the per-layer layout; `stack_layers` and `unstack_layers`
convert whole parameter trees (or any tree with the parameters' structure, such as AdamW's moments)
at load and save.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

_LAYER = re.compile(r"layers_(\d+)$")
_RUN = re.compile(r"scan_(\d+)_(\d+)$")


def layer_runs(windows) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive equal values: (512, 512, 1024) -> [(0, 2), (2, 3)]."""
    runs, start = [], 0
    for i in range(1, len(windows) + 1):
        if i == len(windows) or windows[i] != windows[start]:
            runs.append((start, i))
            start = i
    return runs


def encoder_runs(config) -> list[tuple[int, int]]:
    return layer_runs(config.attention_window)


def decoder_runs(config) -> list[tuple[int, int]]:
    return [(0, config.decoder_layers)]


def run_name(start: int, stop: int) -> str:
    """The scanned module of layers start .. stop - 1."""
    return f"scan_{start}_{stop - 1}"


def _stacks(params) -> list[tuple[Mapping, str]]:
    """The (parent, 'encoder' | 'decoder') stacks of a parameter tree of any head."""
    body = params.get("led", params)
    return [(body, k) for k in ("encoder", "decoder") if k in body]


def is_stacked(params) -> bool:
    """Whether a parameter tree has the scanned layout. Raises ValueError for a tree with neither."""
    for body, key in _stacks(params):
        names = list(body[key])
        if any(_RUN.match(n) for n in names):
            return True
        if any(_LAYER.match(n) for n in names):
            return False
    raise ValueError("the parameter tree has no encoder or decoder layers")


def _replace_stack(params, key: str, new_stack: dict):
    params = dict(params)
    if "led" in params:
        body = dict(params["led"])
        body[key] = new_stack
        params["led"] = body
    else:
        params[key] = new_stack
    return params


def stack_layers(params, config) -> dict:
    """The per-layer layout -> the scanned layout (a tree already scanned is returned as it is).
    Leaves may be numpy or jax arrays, or ShapeDtypeStructs."""
    if is_stacked(params):
        return params
    for _, key in list(_stacks(params)):
        stack = dict(params.get("led", params)[key])
        runs = encoder_runs(config) if key == "encoder" else decoder_runs(config)
        for start, stop in runs:
            layers = [stack.pop(f"layers_{i}") for i in range(start, stop)]
            stack[run_name(start, stop)] = jax.tree_util.tree_map(lambda *xs: _stack(xs), *layers)
        params = _replace_stack(params, key, stack)
    return params


def unstack_layers(params, config) -> dict:
    """The scanned layout -> the per-layer layout (a per-layer tree is returned as it is)."""
    if not is_stacked(params):
        return params
    for _, key in list(_stacks(params)):
        stack = dict(params.get("led", params)[key])
        runs = encoder_runs(config) if key == "encoder" else decoder_runs(config)
        for start, stop in runs:
            run = stack.pop(run_name(start, stop))
            for i in range(start, stop):
                stack[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: _index(x, i - start), run)
        params = _replace_stack(params, key, stack)
    return params


def to_layout(params, config, scanned: bool) -> dict:
    return stack_layers(params, config) if scanned else unstack_layers(params, config)


def _stack(xs):
    x = xs[0]
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(xs),) + tuple(x.shape), x.dtype)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.stack(xs)
    return jax.numpy.stack(xs)


def _index(x: Any, i: int):
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
    return x[i]
