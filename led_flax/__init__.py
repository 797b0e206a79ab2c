"""led-flax: the Longformer-Encoder-Decoder in JAX/Flax, equal to transformers' PyTorch LED."""

from .config import ConfigError, LEDConfig
from .generation import GenerateOutput, GenerationConfig, generate
from .inputs import shift_tokens_right
from .modeling import (LEDForConditionalGeneration, LEDForQuestionAnswering, LEDForSequenceClassification,
                       LEDModel, init_params, model_for)
from .summarization import SummarizeOptions, SummaryReport, summarize
from .tokenizer import LEDTokenizer

__all__ = [
    "ConfigError", "LEDConfig", "LEDModel", "LEDForConditionalGeneration", "LEDForSequenceClassification",
    "LEDForQuestionAnswering", "init_params", "model_for", "shift_tokens_right", "generate", "GenerationConfig",
    "GenerateOutput", "LEDTokenizer", "summarize", "SummarizeOptions", "SummaryReport",
]
__version__ = "0.1.0"
