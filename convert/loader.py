"""The one loader for "a led-flax directory, an HF LED directory or a hub id": `load` returns the
core's typed `LoadedModel`, whatever the source. The CLI and the training job use it."""

from __future__ import annotations

import os

from led_flax.io import pretrained
from led_flax.io.checkpoint import CheckpointError, is_hf_checkpoint, is_led_flax_checkpoint
from led_flax.io.pretrained import LoadedModel

from .hf import HubError, fetch_from_hub, from_hf

HUB_HINT = ("download it on a machine with internet (huggingface-cli download ID --local-dir DIR) "
            "and pass the directory")


def looks_like_hub_id(source: str) -> bool:
    """'owner/name' that is not a local path."""
    return not os.path.exists(source) and source.count("/") == 1 and not source.startswith((".", "/"))


def check_source(source: str | os.PathLike) -> None:
    """Raises CheckpointError, without loading or fetching anything, when `source` is neither a
    checkpoint directory (led-flax or HF) nor something that looks like a hub id."""
    source = os.fspath(source)
    if os.path.isdir(source):
        if not (is_led_flax_checkpoint(source) or is_hf_checkpoint(source)):
            raise CheckpointError(f"{source} is neither a led-flax checkpoint (led_flax.json) nor an HF LED checkpoint "
                                  f"(config.json with model.safetensors, a safetensors index, or pytorch_model.bin)")
    elif os.path.exists(source):
        raise CheckpointError(f"{source} is a file; give a checkpoint directory or a hub id")
    elif not looks_like_hub_id(source):
        raise CheckpointError(f"{source} does not exist; give a checkpoint directory or a hub id (owner/name)")


def resolve_source(source: str | os.PathLike) -> str:
    """A local directory as it is, or a hub id fetched with huggingface_hub (online only).

    Raises CheckpointError for a path that is not a directory, HubError when a hub id cannot be fetched
    (the message says how to get the directory another way)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return source
    if not looks_like_hub_id(source):
        raise CheckpointError(f"{source} is not a checkpoint directory")
    try:
        return fetch_from_hub(source)
    except HubError as e:
        raise HubError(f"{e}; or {HUB_HINT}") from None


def load(source: str | os.PathLike, *, dtype=None, head: str | None = None, scan_layers: bool = True
         ) -> LoadedModel:
    """A led-flax checkpoint, an HF LED directory or a hub id -> LoadedModel.

    dtype: the compute dtype (default float32). head: for an HF checkpoint, load its body into this
    head (see `from_hf`); a led-flax checkpoint keeps its own (check it with `require_head`).
    scan_layers: the module's layer layout (`led_flax.model.stacking`); the params follow it.
    Raises CheckpointError naming the directory when it is neither kind of checkpoint."""
    directory = resolve_source(source)
    if is_led_flax_checkpoint(directory):
        return pretrained.load(directory, dtype, scan_layers)
    if is_hf_checkpoint(directory):
        config, params = from_hf(directory, head, scan_layers=scan_layers)
        return pretrained.from_parts(config, params, directory, config.head or "conditional_generation", dtype,
                                     scan_layers)
    raise CheckpointError(f"{directory} is neither a led-flax checkpoint (led_flax.json) nor an HF LED checkpoint "
                          f"(config.json with model.safetensors, a safetensors index, or pytorch_model.bin)")
