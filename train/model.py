"""The model and tokenizer a training job starts from: made from scratch, or loaded from a led-flax
checkpoint or an HF LED directory."""

from __future__ import annotations

import dataclasses
import os

from led_flax.checkpoint import CheckpointError
from led_flax.config import ConfigError, LEDConfig
from led_flax.positions import check_extension, extend_encoder_positions
from led_flax.pretrained import LoadedModel
from led_flax.quantize import QuantizationError
from led_flax.tokenizer import LEDTokenizer

from .config import TrainConfig, TrainConfigError

# the released checkpoints' architectures, for dry runs on a machine that has not converted them
PRESETS = {
    "allenai/led-base-16384": dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                   encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                   decoder_ffn_dim=3072, attention_window=1024,
                                   max_encoder_position_embeddings=16384, max_decoder_position_embeddings=1024),
    "allenai/led-large-16384": dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                                    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                                    decoder_ffn_dim=4096, attention_window=1024,
                                    max_encoder_position_embeddings=16384, max_decoder_position_embeddings=1024),
}


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
    if init in PRESETS:
        return _positions(LEDConfig(**PRESETS[init]), cfg)
    raise TrainConfigError(f"model.init {init} is not a directory; convert the checkpoint first "
                           f"(led-flax convert {init} DIR) and point model.init at DIR")


def load_pretrained(cfg: TrainConfig) -> LoadedModel:
    """`model.init`, a led-flax checkpoint, an HF LED directory or a hub id, loaded for summarization
    fine-tuning, its params in the layout `model.scan_layers` names, its encoder positions extended to
    `model.max_encoder_positions` when that is set."""
    import convert
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
