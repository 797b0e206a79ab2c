"""Output containers with the field names of transformers' LED outputs (pytrees, so they pass through jit)."""

from __future__ import annotations

from typing import Any

from flax import struct


@struct.dataclass
class LEDEncoderBaseModelOutput:
    last_hidden_state: Any = None  # [b, n, D]
    hidden_states: Any = None  # tuple of [b, n, D], embeddings first
    attentions: Any = None  # tuple of [b, h, n, g + 2w + 1]: global columns first, then the band
    global_attentions: Any = None  # tuple of [b, h, n_padded, g]


@struct.dataclass
class LEDDecoderOutput:
    last_hidden_state: Any = None  # [b, t, D]
    cache: Any = None  # static-shape decoder cache, see `LEDModel.init_cache`
    hidden_states: Any = None
    attentions: Any = None  # tuple of [b, h, t, t or cache length]
    cross_attentions: Any = None  # tuple of [b, h, t, n]


@struct.dataclass
class LEDSeq2SeqModelOutput:
    last_hidden_state: Any = None
    cache: Any = None
    decoder_hidden_states: Any = None
    decoder_attentions: Any = None
    cross_attentions: Any = None
    encoder_last_hidden_state: Any = None
    encoder_hidden_states: Any = None
    encoder_attentions: Any = None
    encoder_global_attentions: Any = None


@struct.dataclass
class LEDSeq2SeqLMOutput(LEDSeq2SeqModelOutput):
    loss: Any = None
    logits: Any = None  # [b, t, vocab]


@struct.dataclass
class LEDSeq2SeqSequenceClassifierOutput(LEDSeq2SeqModelOutput):
    loss: Any = None
    logits: Any = None  # [b, num_labels]


@struct.dataclass
class LEDSeq2SeqQuestionAnsweringModelOutput(LEDSeq2SeqModelOutput):
    loss: Any = None
    start_logits: Any = None  # [b, t]
    end_logits: Any = None  # [b, t]
