"""Whole checkpoint directories: an HF LED directory (or hub id) -> a led-flax checkpoint
(`led-flax convert`), and a led-flax checkpoint -> an HF directory (`led-flax export`). The tokenizer
files and generation_config.json travel with the weights both ways.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import ml_dtypes  # noqa: F401 - registers numpy's "bfloat16" dtype name
import numpy as np

from led_flax import checkpoint
from led_flax.checkpoint import CheckpointError
from led_flax.files import atomic_directory
from led_flax.quantize import QuantizationError, QuantizeSpec, dequantize_params, param_bytes, quantize_params

from .hf import from_hf, to_hf
from .loader import resolve_source


@dataclasses.dataclass(frozen=True)
class Conversion:
    """What `convert_checkpoint` wrote: the led-flax checkpoint `path`, the `head` its parameters
    belong to, the tokenizer and generation files copied in beside them (their names), and the bytes
    its params hold in memory (4-bit values counted as half a byte)."""

    path: str
    head: str
    extra_files: tuple[str, ...]
    param_bytes: float = 0.0


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, head: str | None = None,
                       dtype=None, overwrite: bool = False, progress=None,
                       quantize: QuantizeSpec | None = None) -> Conversion:
    """An HF LED checkpoint directory or hub id -> a led-flax checkpoint directory at `dst`.

    head: load the weights into this head (see `from_hf`; default the checkpoint's own). dtype: cast
    floating params ("float32", "bfloat16" or a numpy dtype; default keep). overwrite: replace an
    existing `dst`, only once the new checkpoint is complete. progress: an object with `update(n)`
    (a tqdm bar), advanced once per tensor. quantize: store the params quantized (`led_flax.quantize`;
    led_flax.json records the spec).
    Raises FileExistsError (before any work) when `dst` exists without overwrite, CheckpointError
    when `src` is not an HF LED checkpoint, HubError when a hub id cannot be fetched, and
    MappingError when the weights do not fit their config.
    """
    dst = os.path.abspath(os.fspath(dst))
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    directory = resolve_source(src)
    if not checkpoint.is_hf_checkpoint(directory):
        raise CheckpointError(f"{directory} is not an HF LED checkpoint (needs config.json and model.safetensors, "
                              f"a safetensors index, or pytorch_model.bin)")
    config, params = from_hf(directory, head=head, dtype=None if dtype is None else np.dtype(dtype),
                             progress=progress, scan_layers=False)  # the per-layer layout, as saved
    if quantize is not None:
        params = jax.device_get(quantize_params(params, quantize))
    extra = checkpoint.companion_files(directory)
    path = checkpoint.save(dst, config, params, extra_files=extra, overwrite=overwrite, quantization=quantize)
    return Conversion(path=path, head=checkpoint.head_of(params),
                      extra_files=tuple(os.path.basename(f) for f in extra), param_bytes=param_bytes(params))


def to_hf_directory(config, params, dst: str | os.PathLike, *, extra_files=(), overwrite: bool = False) -> str:
    """Writes an HF directory that transformers' `from_pretrained` loads: config.json,
    model.safetensors and `extra_files` (paths) copied in, built beside `dst` and swapped in whole.

    Raises FileExistsError before any work when `dst` exists without overwrite."""
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        to_hf(config, params, tmp)
        for f in extra_files:
            shutil.copy2(f, tmp)
    return os.path.abspath(os.fspath(dst))


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                      dequantize: bool = False) -> str:
    """A led-flax checkpoint directory -> an HF directory at `dst`, with the checkpoint's tokenizer and
    generation files. dequantize: a quantized checkpoint is written as float32 (its quantization
    error stays). Raises CheckpointError when `src` is not a led-flax checkpoint, QuantizationError for a
    quantized one without dequantize, FileExistsError when `dst` exists without overwrite."""
    ckpt = checkpoint.load(src, scan_layers=False)
    params = ckpt.params
    if ckpt.quantization is not None:
        if not dequantize:
            raise QuantizationError(
                f"{src} is quantized ({ckpt.quantization.describe()}); an HF checkpoint holds float weights, so "
                f"exporting it would pass the quantization error off as the original: export the float checkpoint "
                f"it was made from, or pass dequantize=True (--dequantize) to write the dequantized weights")
        params = dequantize_params(params)
    return to_hf_directory(ckpt.config, params, dst, extra_files=checkpoint.companion_files(src),
                           overwrite=overwrite)

