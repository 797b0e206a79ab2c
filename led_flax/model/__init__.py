"""The network: `LEDConfig`, Longformer's banded + global attention as pure functions, the encoder
and decoder stacks, the four heads, the decoder cache, scanned layers, weight-only quantization and
the position table's extension. It imports only `led_flax.utils` and `led_flax.parallel`.

| module | what |
|---|---|
| `config` | `LEDConfig` (HF's fields, checked), `ConfigError` |
| `inputs` | host-side checks of ids, labels and masks; `shift_tokens_right` |
| `attention` | blocked sliding-window + global attention, `EncoderMasks` |
| `layers` | dense, LayerNorm, dropout, embeddings, feed-forward, remat and scan |
| `encoder`, `decoder` | the linen stacks |
| `heads` | `LEDModel` and the three task heads, `model_for`, `init_params`, `head_of`, `expected_shapes` |
| `outputs`, `losses` | HF's output containers; the losses as pure functions |
| `cache` | `DecoderCache`, `LayerCache`, `CrossKeyValue` |
| `stacking` | the scanned layout and per-layer names |
| `quantize` | int8 / int4 / nf4 weights: `QuantizedArray`, `QuantizeSpec` |
| `positions` | the encoder position table extended by tiling |
"""

from .cache import CROSS_CACHES, CrossKeyValue, DecoderCache, LayerCache
from .config import HEAD_TO_ARCHITECTURE, ConfigError, LEDConfig
from .heads import (LEDForConditionalGeneration, LEDForQuestionAnswering, LEDForSequenceClassification, LEDModel,
                    expected_shapes, head_of, init_params, model_for)
from .inputs import shift_tokens_right
from .positions import extend_encoder_positions
from .quantize import QuantizationError, QuantizedArray, QuantizeSpec

__all__ = ["CROSS_CACHES", "CrossKeyValue", "DecoderCache", "LayerCache", "HEAD_TO_ARCHITECTURE", "ConfigError",
           "LEDConfig", "LEDForConditionalGeneration", "LEDForQuestionAnswering", "LEDForSequenceClassification",
           "LEDModel", "expected_shapes", "head_of", "init_params", "model_for", "shift_tokens_right",
           "extend_encoder_positions", "QuantizationError", "QuantizedArray", "QuantizeSpec"]
