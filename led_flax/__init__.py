"""led-flax: the Longformer-Encoder-Decoder in JAX/Flax, equal to transformers' PyTorch LED."""

from .config import ConfigError, LEDConfig
from .modeling import (LEDForConditionalGeneration, LEDForQuestionAnswering, LEDForSequenceClassification,
                       LEDModel, init_params, model_for, shift_tokens_right)

__all__ = [
    "ConfigError", "LEDConfig", "LEDModel", "LEDForConditionalGeneration", "LEDForSequenceClassification",
    "LEDForQuestionAnswering", "init_params", "model_for", "shift_tokens_right",
]
__version__ = "0.1.0"
