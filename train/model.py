"""The model and tokenizer a training job starts from: made from scratch, or loaded from a led-flax
checkpoint or an HF LED directory."""

from __future__ import annotations

import os

from led_flax.checkpoint import CheckpointError
from led_flax.config import LEDConfig
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


def scratch_config(cfg: TrainConfig, tokenizer: LEDTokenizer) -> LEDConfig:
    fields = dict(cfg.model.led)
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
        return LEDConfig(**{"vocab_size": cfg.tokenizer.vocab_size, **cfg.model.led})
    if os.path.isdir(init):
        return LEDConfig.from_hf(os.path.join(init, "config.json"))
    if init in PRESETS:
        return LEDConfig(**PRESETS[init])
    raise TrainConfigError(f"model.init {init} is not a directory; convert the checkpoint first "
                           f"(led-flax convert {init} DIR) and point model.init at DIR")


def load_pretrained(init: str, scan_layers: bool = True) -> LoadedModel:
    """`model.init`, a led-flax checkpoint, an HF LED directory or a hub id, loaded for summarization
    fine-tuning, its params in the layout `scan_layers` names."""
    import convert
    try:
        return convert.load(init, head="conditional_generation", scan_layers=scan_layers).require_head(
            "conditional_generation", "summarization fine-tuning").require_float("fine-tuning")
    except convert.HubError as e:
        raise TrainConfigError(f"model.init: {e}; or run `led-flax convert {init} checkpoints/"
                               f"{init.split('/')[1]}` where the hub is reachable and set model.init to that "
                               f"directory") from None
    except (CheckpointError, QuantizationError) as e:
        raise TrainConfigError(f"model.init: {e}") from None
