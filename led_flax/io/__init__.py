"""What reads and writes a model: our checkpoint directory (`checkpoint`), a model ready to generate
(`pretrained.LoadedModel`), the LED tokenizer (`tokenizer`), and the hooks that keep orbax's
leftover errors off the console (`orbax_logs`). HF directories and hub ids are `led_flax.convert`'s.
"""

from .checkpoint import Checkpoint, CheckpointError, companion_files, is_hf_checkpoint, is_led_flax_checkpoint
from .pretrained import COMPUTE_DTYPES, LoadedModel
from .tokenizer import LEDTokenizer, TokenizerError

__all__ = ["Checkpoint", "CheckpointError", "companion_files", "is_hf_checkpoint", "is_led_flax_checkpoint",
           "COMPUTE_DTYPES", "LoadedModel", "LEDTokenizer", "TokenizerError"]
