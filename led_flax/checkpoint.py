"""led-flax's own checkpoint directory: what `led-flax convert` writes, inference reads, and training
exports to.

    DIR/
      led_flax.json           {"format": "led-flax", "format_version": 1, "head": ..., "param_dtype": ...,
                               "quantization": a quantize.QuantizeSpec (only for quantized params)}
      config.json             the HF LED config (LEDConfig.to_hf), readable by transformers
      generation_config.json  optional, HF's generation settings
      params/                 the parameter tree, saved with orbax (StandardCheckpointer)
      tokenizer files         tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, ...

A directory is written under a temporary name beside DIR and renamed into place only when complete,
so a crash never leaves a half-written checkpoint where a good one was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from .config import LEDConfig
from .files import atomic_directory, write_atomic
from .quantize import QuantizeSpec, from_saved, is_quantized, to_saved
from .stacking import to_layout, unstack_layers

FORMAT = "led-flax"
FORMAT_VERSION = 1
MARKER = "led_flax.json"
PARAMS = "params"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
GENERATION_CONFIG = "generation_config.json"


class CheckpointError(ValueError):
    """A directory that is not a readable LED checkpoint; the message says what is wrong and what to do."""


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


def head_of(params) -> str:
    """Which of the four heads a param tree belongs to."""
    if "led" not in params:
        return "base"
    if "qa_outputs" in params:
        return "question_answering"
    if "classification_head" in params:
        return "sequence_classification"
    return "conditional_generation"


def _local_checkpointer(ocp):
    """A checkpointer for this process alone: in a multi-process job only one process writes or reads
    a led-flax checkpoint (host arrays), so orbax must not wait for the others at its barriers."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"led_flax_local_{me}"))


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
        checkpointer = _local_checkpointer(ocp)
        checkpointer.save(os.path.join(tmp, PARAMS), params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        config.save(tmp)
        for f in extra_files:
            shutil.copy2(f, os.path.join(tmp, os.path.basename(f)))
        marker = {"format": FORMAT, "format_version": FORMAT_VERSION, "head": head_of(params),
                  "param_dtype": dtypes[0] if len(dtypes) == 1 else dtypes}
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


def load(directory: str | os.PathLike, scan_layers: bool = True) -> Checkpoint:
    """Reads our checkpoint directory; the params in the scanned layout (`led_flax.stacking`) unless
    `scan_layers` is False. Raises CheckpointError for a directory that is not one."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    if not is_led_flax_checkpoint(directory):
        hint = (f"it is an HF checkpoint: load it with `convert.load({directory!r})`, or convert it once with "
                f"`led-flax convert {directory} DST`" if is_hf_checkpoint(directory) else
                "expected a directory written by `led-flax convert` or by training")
        raise CheckpointError(f"{directory} is not a led-flax checkpoint (no {MARKER}); {hint}")
    with open(os.path.join(directory, MARKER), encoding="utf-8") as f:
        marker = json.load(f)
    if marker.get("format") != FORMAT or marker.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory} has format {marker.get('format')!r} version "
                              f"{marker.get('format_version')}; this led-flax reads {FORMAT} up to version "
                              f"{FORMAT_VERSION}: upgrade led-flax")
    config = LEDConfig.from_hf(directory)
    checkpointer = _local_checkpointer(ocp)
    try:
        params = checkpointer.restore(os.path.join(directory, PARAMS))
    finally:
        checkpointer.close()
    quantization = QuantizeSpec.from_json(marker["quantization"]) if marker.get("quantization") else None
    if quantization is not None:
        params = from_saved(params, quantization)
    return Checkpoint(config=config, params=to_layout(params, config, scan_layers), head=marker["head"],
                      quantization=quantization)
