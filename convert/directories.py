"""Whole checkpoint directories: an HF LED directory (or hub id) -> a led-flax checkpoint
(`led-flax convert`), and a led-flax checkpoint -> an HF directory (`led-flax export`). The tokenizer
files and generation_config.json travel with the weights both ways.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import jax
import ml_dtypes  # noqa: F401 - registers numpy's "bfloat16" dtype name
import numpy as np

from led_flax.io import checkpoint
from led_flax.io.checkpoint import CheckpointError
from led_flax.model.config import LEDConfig
from led_flax.model.heads import head_of
from led_flax.utils.files import atomic_directory, writing
from led_flax.model.positions import check_extension, extend_encoder_positions
from led_flax.model.quantize import QuantizationError, QuantizeSpec, dequantize_params, param_bytes, quantize_params

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


def check_destination(dst: str | os.PathLike, *, overwrite: bool, src: str | os.PathLike | None = None) -> str:
    """The absolute path of `dst`, a directory to write, checked before any work.

    Raises FileExistsError when it exists without `overwrite`; NotADirectoryError when it (or a
    folder above it) is a file; ValueError when it is `src` itself (the source would be replaced by
    the conversion); WriteError when its filesystem is read-only or full."""
    dst = os.path.abspath(os.fspath(dst))
    if os.path.exists(dst) and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(f"{dst} is a file; name a directory to write")
    if src is not None and os.path.exists(dst) and os.path.exists(src) and os.path.samefile(src, dst):
        raise ValueError(f"the destination {dst} is the source itself; write the result to another directory")
    ancestor = os.path.dirname(dst)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(f"cannot write {dst}: {ancestor} is a file, not a folder")
    with writing(dst):  # a read-only or full filesystem fails here, not after the work
        os.rmdir(tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.probe-", dir=ancestor))
    return dst


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, head: str | None = None,
                       dtype=None, overwrite: bool = False, progress=None,
                       max_encoder_positions: int | None = None,
                       quantize: QuantizeSpec | None = None) -> Conversion:
    """An HF LED checkpoint directory or hub id -> a led-flax checkpoint directory at `dst`.

    head: load the weights into this head (see `from_hf`; default the checkpoint's own). dtype: cast
    floating params ("float32", "bfloat16" or a numpy dtype; default keep). overwrite: replace an
    existing `dst`, only once the new checkpoint is complete. progress: an object with `update(n)`
    (a tqdm bar), advanced once per tensor. max_encoder_positions: extend the encoder's position table
    to this many rows by tiling it (`led_flax.model.positions`); config.json and the tokenizer's
    model_max_length say the new length, so transformers reads the result too. quantize: store the
    params quantized (`led_flax.model.quantize`; led_flax.json records the spec).
    Raises, before any work, what `check_destination` raises (FileExistsError when `dst` exists
    without overwrite, ...) and ConfigError for an extension that cannot work (not longer, not a
    multiple of the window); CheckpointError when `src` is not an HF LED checkpoint, HubError when a
    hub id cannot be fetched, and MappingError when the weights do not fit their config.
    """
    dst = check_destination(dst, overwrite=overwrite, src=src)
    if max_encoder_positions is not None:  # refused before any work
        check_extension(LEDConfig.from_hf(resolve_source(src)), max_encoder_positions)
    directory = resolve_source(src)
    if not checkpoint.is_hf_checkpoint(directory):
        raise CheckpointError(f"{directory} is not an HF LED checkpoint (needs config.json and model.safetensors, "
                              f"a safetensors index, or pytorch_model.bin)")
    config, params = from_hf(directory, head=head, dtype=None if dtype is None else np.dtype(dtype),
                             progress=progress, scan_layers=False)  # the per-layer layout, as saved
    extra = checkpoint.companion_files(directory)
    with tempfile.TemporaryDirectory() as scratch:
        if max_encoder_positions is not None:
            config, params = extend_encoder_positions(config, params, max_encoder_positions)
            extra = [_with_max_length(f, max_encoder_positions, scratch) for f in extra]
        if quantize is not None:
            params = jax.device_get(quantize_params(params, quantize))
        path = checkpoint.save(dst, config, params, extra_files=extra, overwrite=overwrite, quantization=quantize)
    return Conversion(path=path, head=head_of(params),
                      extra_files=tuple(os.path.basename(f) for f in extra), param_bytes=param_bytes(params))


def _with_max_length(path: str, n: int, scratch: str) -> str:
    """tokenizer_config.json with model_max_length n (a copy in `scratch`); other files as they are."""
    if os.path.basename(path) != "tokenizer_config.json":
        return path
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["model_max_length"] = n
    out = os.path.join(scratch, "tokenizer_config.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return out


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
    generation files. Raises, before reading `src`, what `check_destination` raises (FileExistsError
    when `dst` exists without overwrite, ...); CheckpointError when `src` is not a led-flax
    checkpoint or its config.json does not fit its params; QuantizationError for a quantized one
    without `dequantize` (which writes it as float32, its quantization error kept)."""
    dst = check_destination(dst, overwrite=overwrite, src=src)
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

