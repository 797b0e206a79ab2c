"""A model ready to generate: module, parameters, config, generation settings and tokenizer, loaded
from a led-flax checkpoint directory.

The core reads only its own format. An HF directory or a hub id is loaded by `convert.load`, which
returns the same `LoadedModel`; everything that summarizes or fine-tunes takes that object.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import checkpoint
from .config import HEAD_TO_ARCHITECTURE, LEDConfig
from .generation import GenerationConfig
from .tokenizer import LEDTokenizer


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """module: the linen module (its compute dtype set); params: the parameter tree; config: its
    LEDConfig; generation_config: the checkpoint's generation settings (generation_config.json, or the
    old fields of config.json); tokenizer: None when the directory has no tokenizer files; source: the
    directory it came from."""

    module: Any
    params: Any
    config: LEDConfig
    generation_config: GenerationConfig
    tokenizer: LEDTokenizer | None
    source: str

    @property
    def head(self) -> str:
        return self.config.head or "conditional_generation"

    def require_head(self, head: str, purpose: str) -> "LoadedModel":
        """Returns self, or raises CheckpointError when the model is another head."""
        if self.head != head:
            raise checkpoint.CheckpointError(
                f"{self.source} holds a {HEAD_TO_ARCHITECTURE[self.head]} model; {purpose} needs "
                f"{HEAD_TO_ARCHITECTURE[head]}")
        return self


def check_tokenizer(tokenizer: LEDTokenizer, config: LEDConfig, directory: str | os.PathLike) -> None:
    """Raises CheckpointError when the tokenizer's bos, eos or pad id differs from the model config's:
    the tokenizer files belong to another model, and every summary would be garbage."""
    pairs = [(name, getattr(tokenizer, f"{name}_token_id"), getattr(config, f"{name}_token_id"))
             for name in ("bos", "eos", "pad")]
    def fits(ours, theirs):
        return theirs is None or ours == theirs or (isinstance(theirs, tuple) and ours in theirs)
    wrong = [f"{name} {tokenizer.special[name + '_token']}={ours} (config.json: {theirs})"
             for name, ours, theirs in pairs if not fits(ours, theirs)]
    if wrong:
        raise checkpoint.CheckpointError(
            f"{os.fspath(directory)}: the tokenizer's special token ids differ from config.json's: {', '.join(wrong)}; "
            f"the tokenizer files belong to another model: copy them from the checkpoint this one was made from")


def from_parts(config: LEDConfig, params, directory: str, head: str, dtype=None, scan_layers: bool = True
               ) -> LoadedModel:
    """A LoadedModel from a config and params (in the layout `scan_layers` names) read elsewhere; the
    tokenizer and generation settings come from `directory`.

    Raises TokenizerError for unreadable tokenizer files, CheckpointError when their special token
    ids differ from the config's."""
    import jax.numpy as jnp

    from .modeling import model_for

    tokenizer = None
    if LEDTokenizer.has_files(directory):
        tokenizer = LEDTokenizer.from_pretrained(directory, model_max_length=config.max_encoder_position_embeddings)
        check_tokenizer(tokenizer, config, directory)
    module = model_for(config, head, dtype=dtype or jnp.float32, scan_layers=scan_layers)
    return LoadedModel(module=module, params=params, config=config,
                       generation_config=GenerationConfig.from_hf(directory, config), tokenizer=tokenizer,
                       source=os.fspath(directory))


def load(directory: str | os.PathLike, dtype=None, scan_layers: bool = True) -> LoadedModel:
    """A led-flax checkpoint directory -> LoadedModel. dtype: the compute dtype (default float32);
    scan_layers: the module's layer layout (the params follow it).

    Raises CheckpointError for anything else; for an HF directory the message shows the line that
    loads it through `convert`."""
    directory = os.fspath(directory)
    ckpt = checkpoint.load(directory, scan_layers)
    return from_parts(ckpt.config, ckpt.params, directory, ckpt.head, dtype, scan_layers)
