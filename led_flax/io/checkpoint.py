"""led-flax's own checkpoint directory: what `led-flax convert` writes, inference reads, and training
exports to.

    DIR/
      led_flax.json           {"format": "led-flax", "format_version": 1, "head": ..., "param_dtype": ...,
                               "param_crc32": {"led/shared/embedding": CRC-32 of its bytes, ...},
                               "quantization": a quantize.QuantizeSpec (only for quantized params)}
      config.json             the HF LED config (LEDConfig.to_hf), readable by transformers
      generation_config.json  optional, HF's generation settings
      params/                 the parameter tree, saved with orbax (StandardCheckpointer)
      tokenizer files         tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, ...

A directory is written under a temporary name beside DIR and renamed into place only when complete,
so a crash never leaves a half-written checkpoint where a good one was. `load` checks config.json
against the shapes the params were saved with before it reads them, and every tensor it reads
against the CRC-32 the marker records (checkpoints written before the marker held them are read
unchecked): a changed config or a damaged file is a CheckpointError naming what is wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import zlib
from typing import Any

import jax
import numpy as np

from led_flax.model.config import LEDConfig
from led_flax.model.heads import expected_shapes, head_of
from led_flax.model.quantize import QuantizeSpec, from_saved, is_quantized, to_saved
from led_flax.model.stacking import to_layout, unstack_layers
from led_flax.utils.files import atomic_directory, write_atomic
from led_flax.utils.trees import flatten, non_finite

from .orbax_logs import describe_read_error, orbax_write, quiet_closed_loop_errors, quiet_logger

FORMAT = "led-flax"
FORMAT_VERSION = 1
MARKER = "led_flax.json"
PARAMS = "params"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
GENERATION_CONFIG = "generation_config.json"


class CheckpointError(ValueError):
    """A directory that is not a readable LED checkpoint; the message says what is wrong and what to do."""


def check_finite(flat: dict, source: str) -> None:
    """Raises CheckpointError naming every tensor of `flat` (name -> array) that holds a NaN or an
    infinity: such weights make every output NaN, and generation would write empty text as if
    nothing were wrong (transformers loads them without a word)."""
    bad = non_finite(flat)
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite weights in {len(bad)} tensors: {_listing(bad)}; the "
                              f"checkpoint was saved from a diverged run or is damaged: use an earlier checkpoint, "
                              f"or fix these tensors at their source")


def is_led_flax_checkpoint(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), MARKER))


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    path = os.fspath(path)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, w)) for w in weights)


def companion_files(directory: str | os.PathLike) -> list[str]:
    """The paths of the tokenizer files and generation_config.json present in `directory`: what
    travels with the weights when a checkpoint is converted or exported."""
    directory = os.fspath(directory)
    return [os.path.join(directory, f) for f in TOKENIZER_FILES + (GENERATION_CONFIG,)
            if os.path.isfile(os.path.join(directory, f))]


def _local_checkpointer(ocp):
    """A checkpointer for this process alone: in a multi-process job only one process writes or reads
    a led-flax checkpoint (host arrays), so orbax must not wait for the others at its barriers."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"led_flax_local_{me}"))


def _crc32(array) -> int:
    return zlib.crc32(np.ascontiguousarray(np.asarray(array)).reshape(-1).view(np.uint8))


def save(directory: str | os.PathLike, config: LEDConfig, params, *, extra_files=(), overwrite: bool = False,
         quantization: QuantizeSpec | None = None) -> str:
    """Writes a complete checkpoint directory atomically.

    extra_files: paths copied in beside the params (tokenizer files, generation_config.json).
    overwrite: replace an existing checkpoint at `directory` (only once the new one is complete).
    quantization: how quantized params were made (`quantize.quantize_params`); required with them.
    Raises ValueError for quantized params without `quantization`, or float params with it.
    """
    import orbax.checkpoint as ocp

    if is_quantized(params) != (quantization is not None):
        raise ValueError("pass quantization= exactly when the params are quantized (quantize.quantize_params)")
    directory = os.path.abspath(os.fspath(directory))
    with atomic_directory(directory, overwrite=overwrite) as tmp:
        # the per-layer layout on disk; a QuantizedArray as its two arrays, values and scales
        params = to_saved(unstack_layers(jax.device_get(params), config))
        dtypes = sorted({np.asarray(x).dtype.name for x in jax.tree_util.tree_leaves(params)})
        with orbax_write(directory):  # a full disk: one WriteError naming `directory`, not orbax's tracebacks
            checkpointer = _local_checkpointer(ocp)
            try:
                checkpointer.save(os.path.join(tmp, PARAMS), params)
                checkpointer.wait_until_finished()
            finally:
                checkpointer.close()
        config.save(tmp)
        for f in extra_files:
            shutil.copy2(f, os.path.join(tmp, os.path.basename(f)))
        marker = {"format": FORMAT, "format_version": FORMAT_VERSION, "head": head_of(params),
                  "param_dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
                  "param_crc32": {path: _crc32(v) for path, v in sorted(flatten(params).items())}}
        if quantization is not None:
            marker["quantization"] = quantization.to_json()
        write_atomic(os.path.join(tmp, MARKER), json.dumps(marker, indent=2) + "\n")
    return directory


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a led-flax checkpoint directory holds: the config, the parameter tree (host arrays), the
    head its parameters belong to ('conditional_generation', ...) and, for quantized params, how they
    were quantized."""

    config: LEDConfig
    params: Any
    head: str
    quantization: QuantizeSpec | None = None


def _read_marker(directory: str) -> dict:
    path = os.path.join(directory, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: convert or export it "
                              f"again from its source") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("head"), str):
        raise CheckpointError(f"{path} is not a led-flax marker (no head); the checkpoint is damaged: convert or "
                              f"export it again from its source")
    if marker.get("format") != FORMAT or marker.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} has format {marker.get('format')!r} version "
                              f"{marker.get('format_version')}; this led-flax reads {FORMAT} up to version "
                              f"{FORMAT_VERSION}: upgrade led-flax")
    return marker


def _listing(items: list[str], limit: int = 8, sep: str = ", ") -> str:
    return sep.join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _quantization(directory: str, marker: dict) -> QuantizeSpec | None:
    """The QuantizeSpec led_flax.json records (None for float params). Raises CheckpointError naming
    the marker when the record is not one."""
    record = marker.get("quantization")
    if not record:
        return None
    try:
        if not isinstance(record, dict):
            raise TypeError(f"a {type(record).__name__}, not an object")
        return QuantizeSpec.from_json(record)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}/{MARKER} has a quantization record that is not one ({e}); the checkpoint "
                              f"is damaged: convert it again from its float source") from None


def _float_shapes(saved: dict[str, tuple]) -> dict[str, tuple]:
    """Saved shapes by path, a quantized matrix (`P/values` [O, I] beside `P/scales`) as the float
    parameter P it stands for (a kernel [I, O])."""
    out = {}
    for p, shape in saved.items():
        base = p.rsplit("/", 1)[0]
        if p.endswith(("/values", "/scales")) and f"{base}/values" in saved and f"{base}/scales" in saved:
            if p.endswith("/values"):
                out[base] = shape[:-2] + (shape[-1], shape[-2]) if base.endswith("kernel") else shape
        else:
            out[p] = shape
    return out


def _check_shapes(directory: str, config: LEDConfig, head: str, saved: dict[str, tuple]) -> None:
    """Raises CheckpointError listing every tensor that config.json does not imply as saved."""
    expected = expected_shapes(config, head)  # the per-layer layout, as saved
    missing = sorted(set(expected) - set(saved))
    unused = sorted(set(saved) - set(expected))
    wrong = [f"{p}: params {saved[p]}, config.json implies {expected[p]}" for p in sorted(set(saved) & set(expected))
             if tuple(saved[p]) != expected[p]]
    problems = ([f"shapes that differ: {_listing(wrong, 4, '; ')}"] if wrong else []) + \
        ([f"missing from params: {_listing(missing)}"] if missing else []) + \
        ([f"in params but unused: {_listing(unused)}"] if unused else [])
    if problems:
        raise CheckpointError(f"{directory}/config.json does not fit the params saved beside it ({'; '.join(problems)}); "
                              f"config.json was changed after the params were written: put back the one written with "
                              f"them, or convert the checkpoint again")


def load(directory: str | os.PathLike, scan_layers: bool = True) -> Checkpoint:
    """Reads our checkpoint directory; the params in the scanned layout (`led_flax.model.stacking`) unless
    `scan_layers` is False.

    Raises CheckpointError for a directory that is not one, a config.json that does not fit the
    params' shapes (checked before they are read), and params that are truncated or corrupt (an
    unreadable file, or a tensor whose CRC-32 differs from the one recorded when it was saved)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if not os.path.exists(directory):
        raise CheckpointError(f"{directory} does not exist; check the path (a checkpoint written by `led-flax convert` "
                              f"or by training)")
    if not is_led_flax_checkpoint(directory):
        hint = (f"it is an HF checkpoint: load it with `convert.load({directory!r})`, or convert it once with "
                f"`led-flax convert {directory} DST`" if is_hf_checkpoint(directory) else
                "expected a directory written by `led-flax convert` or by training")
        raise CheckpointError(f"{directory} is not a led-flax checkpoint (no {MARKER}); {hint}")
    marker = _read_marker(directory)
    config = LEDConfig.from_hf(directory)
    quantization = _quantization(directory, marker)
    params_dir = os.path.join(directory, PARAMS)
    damaged = f"{params_dir} is truncated or corrupt"
    again = "convert or export the checkpoint again from its source"
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{directory} has no {PARAMS}/ folder; {again}")
    checkpointer = _local_checkpointer(ocp)
    quiet_closed_loop_errors()  # a failed read's leftovers must not print after (or over) its error
    try:
        try:
            with quiet_logger("absl"):  # orbax logs a warning before it returns no metadata
                metadata = checkpointer.metadata(params_dir).item_metadata
            saved = {p: tuple(m.shape) for p, m in flatten(dict(metadata)).items()} if metadata is not None else None
        except Exception as e:  # orbax's and tensorstore's many kinds: a JSON error, a ValueError, ...
            raise CheckpointError(f"{damaged}: its metadata cannot be read ({describe_read_error(e)}); {again}") from None
        if saved is None:
            raise CheckpointError(f"{damaged}: its metadata cannot be read; {again}")
        _check_shapes(directory, config, marker["head"], saved if quantization is None else _float_shapes(saved))
        try:
            with quiet_logger("absl"):
                params = checkpointer.restore(params_dir)
        except Exception as e:
            raise CheckpointError(f"{damaged}: {describe_read_error(e)}; {again}") from None
    finally:
        with contextlib.suppress(Exception):
            checkpointer.close()
    recorded = marker.get("param_crc32")
    if isinstance(recorded, dict):
        bad = [p for p, v in sorted(flatten(params).items()) if p in recorded and recorded[p] != _crc32(v)]
        if bad:
            raise CheckpointError(f"{damaged}: tensors that differ from what was saved (CRC-32): {_listing(bad)}; {again}")
    check_finite(flatten(params), params_dir)
    if quantization is not None:
        params = from_saved(params, quantization)
    return Checkpoint(config=config, params=to_layout(params, config, scan_layers), head=marker["head"],
                      quantization=quantization)
