"""Generation on top of the model: HF's generation settings (`generation_config`), transformers'
logits processors and sampling warpers in its order (`processors`, `warpers`), the greedy, sampling
and beam-search loops over named states (`search`), and `generate`, the encoder, cache and loop under
one jit (`generation`).
"""

from .generation import GenerateOutput, generate
from .generation_config import GenerationConfig, GenerationSettingWarning

__all__ = ["GenerateOutput", "generate", "GenerationConfig", "GenerationSettingWarning"]
