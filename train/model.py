"""The model and tokenizer a training job starts from: made from scratch, or loaded from a led-flax
checkpoint or an HF LED directory."""

from __future__ import annotations

import dataclasses
import os

from led_flax.io.checkpoint import CheckpointError
from led_flax.model.config import RELEASED, ConfigError, LEDConfig
from led_flax.model.positions import check_extension, extend_encoder_positions
from led_flax.io.pretrained import LoadedModel
from led_flax.model.quantize import QuantizationError
from led_flax.io.tokenizer import LEDTokenizer

from .config import TrainConfig, TrainConfigError



def _positions(config: LEDConfig, cfg: TrainConfig) -> LEDConfig:
    """`config` with model.max_encoder_positions rows of encoder positions (checked as an extension)."""
    n = cfg.model.max_encoder_positions
    if n is None or n == config.max_encoder_position_embeddings:
        return config
    try:
        check_extension(config, n)
    except ConfigError as e:
        raise TrainConfigError(f"model.{e}") from None
    return dataclasses.replace(config, max_encoder_position_embeddings=n)


def scratch_config(cfg: TrainConfig, tokenizer: LEDTokenizer) -> LEDConfig:
    fields = dict(cfg.model.led)
    if cfg.model.max_encoder_positions is not None:  # a model from scratch simply has that many positions
        fields["max_encoder_position_embeddings"] = cfg.model.max_encoder_positions
    fields.update(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  decoder_start_token_id=tokenizer.eos_token_id)
    try:
        return LEDConfig(**fields)
    except TypeError as e:
        raise TrainConfigError(f"model.led: {e}; its keys are LEDConfig fields (d_model, encoder_layers, ...)") from None


def architecture(cfg: TrainConfig) -> LEDConfig:
    """The LEDConfig of `model.init` without loading weights (for dry runs)."""
    init = cfg.model.init
    if init == "scratch":
        fields = {"vocab_size": cfg.tokenizer.vocab_size, **cfg.model.led}
        if cfg.model.max_encoder_positions is not None:
            fields["max_encoder_position_embeddings"] = cfg.model.max_encoder_positions
        return LEDConfig(**fields)
    if os.path.isdir(init):
        return _positions(LEDConfig.from_hf(os.path.join(init, "config.json")), cfg)
    if init in RELEASED:  # a dry run on a machine that has not converted the checkpoint
        return _positions(LEDConfig(**RELEASED[init]), cfg)
    raise TrainConfigError(f"model.init {init} is not a directory; convert the checkpoint first "
                           f"(led-flax convert {init} DIR) and point model.init at DIR")


def load_pretrained(cfg: TrainConfig) -> LoadedModel:
    """`model.init`, a led-flax checkpoint, an HF LED directory or a hub id, loaded for summarization
    fine-tuning, its params in the layout `model.scan_layers` names, its encoder positions extended to
    `model.max_encoder_positions` when that is set."""
    from led_flax import convert
    init = cfg.model.init
    try:
        loaded = convert.load(init, head="conditional_generation", scan_layers=cfg.model.scan_layers)
        loaded.require_head("conditional_generation", "summarization fine-tuning").require_float("fine-tuning")
    except convert.HubError as e:
        raise TrainConfigError(f"model.init: {e}; or run `led-flax convert {init} checkpoints/"
                               f"{init.split('/')[1]}` where the hub is reachable and set model.init to that "
                               f"directory") from None
    except (CheckpointError, QuantizationError) as e:
        raise TrainConfigError(f"model.init: {e}") from None
    config = _positions(loaded.config, cfg)
    if config is loaded.config:
        return loaded
    config, params = extend_encoder_positions(loaded.config, loaded.params, config.max_encoder_position_embeddings)
    return dataclasses.replace(loaded, config=config, params=params, module=loaded.module.clone(config=config))
