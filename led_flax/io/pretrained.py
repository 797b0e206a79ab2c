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
from led_flax.model import quantize
from led_flax.model.cache import CROSS_CACHES
from led_flax.model.config import HEAD_TO_ARCHITECTURE, LEDConfig
from led_flax.decoding.generation_config import GenerationConfig
from led_flax.model.quantize import QuantizeSpec
from .tokenizer import LEDTokenizer

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """module: the linen module (its compute dtype set); params: the parameter tree; config: its
    LEDConfig; generation_config: the checkpoint's generation settings (generation_config.json, or the
    old fields of config.json); tokenizer: None when the directory has no tokenizer files; source: the
    directory it came from; quantization: how its params were quantized (None: float)."""

    module: Any
    params: Any
    config: LEDConfig
    generation_config: GenerationConfig
    tokenizer: LEDTokenizer | None
    source: str
    quantization: QuantizeSpec | None = None

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

    def require_float(self, purpose: str) -> "LoadedModel":
        """Returns self, or raises QuantizationError when the params are quantized."""
        if self.quantization is not None:
            raise quantize.QuantizationError(
                f"{self.source} is quantized ({self.quantization.describe()}); {purpose} needs float weights: use "
                f"the float checkpoint it was made from")
        return self

    def quantized(self, spec: QuantizeSpec | None) -> "LoadedModel":
        """The model with its params quantized by `spec` (None, or the spec they already have: self).
        Raises QuantizationError when they were quantized otherwise."""
        if spec is None or spec == self.quantization:
            return self
        if self.quantization is not None:
            raise quantize.QuantizationError(
                f"{self.source} is already quantized ({self.quantization.describe()}), not as asked "
                f"({spec.describe()}); quantize its float original instead")
        return dataclasses.replace(self, params=quantize.quantize_params(self.params, spec), quantization=spec)

    def with_compute(self, dtype: str | None = None, cross_cache: str | None = None,
                     attention_implementation: str | None = None) -> "LoadedModel":
        """The model computing in `dtype` (float32, bfloat16 or float16; the params keep their storage
        dtypes), caching generation's cross-attention keys and values as `cross_cache` (float or int8)
        and running the encoder's local attention as `attention_implementation` (xla, splash or auto:
        `LEDConfig.attention_implementation`); None keeps each as it is. Raises ValueError for another
        value."""
        changes, config = {}, self.config
        if attention_implementation is not None and attention_implementation != config.attention_implementation:
            config = changes["config"] = config.replace(attention_implementation=attention_implementation)
        if dtype is not None:
            if str(dtype) not in COMPUTE_DTYPES:
                raise ValueError(f"compute dtype {dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
            import jax.numpy as jnp
            changes["dtype"] = jnp.dtype(dtype)
        if cross_cache is not None:
            if cross_cache not in CROSS_CACHES:
                raise ValueError(f"cross_cache {cross_cache!r} is not one of {', '.join(CROSS_CACHES)}")
            changes["cross_cache"] = cross_cache
        return dataclasses.replace(self, module=self.module.clone(**changes), config=config) if changes else self


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


def from_parts(config: LEDConfig, params, directory: str, head: str, dtype=None, scan_layers: bool = True,
               quantization: QuantizeSpec | None = None) -> LoadedModel:
    """A LoadedModel from a config and params (in the layout `scan_layers` names) read elsewhere; the
    tokenizer and generation settings come from `directory`.

    Raises TokenizerError for unreadable tokenizer files, CheckpointError when their special token
    ids differ from the config's."""
    import jax.numpy as jnp

    from led_flax.model.heads import model_for

    tokenizer = None
    if LEDTokenizer.has_files(directory):
        tokenizer = LEDTokenizer.from_pretrained(directory, model_max_length=config.max_encoder_position_embeddings)
        check_tokenizer(tokenizer, config, directory)
    module = model_for(config, head, dtype=dtype or jnp.float32, scan_layers=scan_layers)
    return LoadedModel(module=module, params=params, config=config,
                       generation_config=GenerationConfig.from_hf(directory, config), tokenizer=tokenizer,
                       source=os.fspath(directory), quantization=quantization)


def load(directory: str | os.PathLike, dtype=None, scan_layers: bool = True) -> LoadedModel:
    """A led-flax checkpoint directory -> LoadedModel. dtype: the compute dtype (default float32);
    scan_layers: the module's layer layout (the params follow it).

    Raises CheckpointError for anything else; for an HF directory the message shows the line that
    loads it through `convert`."""
    directory = os.fspath(directory)
    ckpt = checkpoint.load(directory, scan_layers)
    return from_parts(ckpt.config, ckpt.params, directory, ckpt.head, dtype, scan_layers, ckpt.quantization)
