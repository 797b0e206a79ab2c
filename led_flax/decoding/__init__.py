"""Generation on top of the model: HF's generation settings (`generation_config`), their split into
the compiled program's static key and per-row traced values (`settings`), transformers' logits
processors and sampling warpers in its order (`processors`, `warpers`), the greedy, sampling and
beam-search loops over named states (`search`), and `generate`, the encoder, cache and loop under one
jit (`generation`).
"""

from .generation import GenerateOutput, generate
from .generation_config import GenerationConfig, GenerationSettingWarning
from .settings import GenerationValues, SplitSettings, split

__all__ = ["GenerateOutput", "generate", "GenerationConfig", "GenerationSettingWarning", "GenerationValues",
           "SplitSettings", "split"]
