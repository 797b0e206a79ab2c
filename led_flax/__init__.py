"""led-flax: the Longformer-Encoder-Decoder in JAX/Flax, equal to transformers' PyTorch LED.

The public face. The layers, each a subpackage, import only those below them:

    utils -> parallel -> model -> decoding -> io -> summarization, convert -> train, serving -> cli

- `led_flax.model`: the config, attention, the stacks, the heads, the cache, quantization;
- `led_flax.parallel`: the sharding rules and one document split over devices;
- `led_flax.decoding`: generation settings, processors, the search loops, `generate`;
- `led_flax.io`: our checkpoint directory, `LoadedModel`, the tokenizer;
- `led_flax.summarization`: `summarize`, a corpus in length buckets, resumable;
- `led_flax.convert`: HF checkpoints both ways; `led_flax.train`: the training job;
- `led_flax.serving`: the summarization endpoint (`led-flax serve`; the `serve` extra);
- `led_flax.cli`: the `led-flax` command, which nothing imports.
"""

from led_flax.decoding import GenerateOutput, GenerationConfig, generate
from led_flax.io import LEDTokenizer
from led_flax.model import (ConfigError, LEDConfig, LEDForConditionalGeneration, LEDForQuestionAnswering,
                            LEDForSequenceClassification, LEDModel, init_params, model_for, shift_tokens_right)
from led_flax.summarization import SummarizeOptions, SummaryReport, summarize

__all__ = [
    "ConfigError", "LEDConfig", "LEDModel", "LEDForConditionalGeneration", "LEDForSequenceClassification",
    "LEDForQuestionAnswering", "init_params", "model_for", "shift_tokens_right", "generate", "GenerationConfig",
    "GenerateOutput", "LEDTokenizer", "summarize", "SummarizeOptions", "SummaryReport",
]
__version__ = "0.1.0"
