"""`LEDConfig`: one frozen dataclass that reads and writes Hugging Face's LED `config.json`.

Field names and defaults follow `transformers.LEDConfig` (the code, not the docs: the code's
`max_decoder_position_embeddings` default is 1024). The dataclass is frozen and hashable, so it can
be a static argument of `jax.jit`. Keys of a real `config.json` that are not LED fields
(`transformers_version`, `torch_dtype`, old generation settings, ...) are kept verbatim in `extra`
so that `LEDConfig.from_hf(d).to_hf()` gives back every key of `d`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .activations import ACTIVATIONS

# the heads and the transformers classes they stand for: the one list of heads
ARCHITECTURE_TO_HEAD = {
    "LEDModel": "base",
    "LEDForConditionalGeneration": "conditional_generation",
    "LEDForSequenceClassification": "sequence_classification",
    "LEDForQuestionAnswering": "question_answering",
}
HEAD_TO_ARCHITECTURE = {v: k for k, v in ARCHITECTURE_TO_HEAD.items()}
# The released checkpoints' architectures (the shape fields of their config.json): what dry runs and
# the benchmarks build when the checkpoint itself is not on the machine.
RELEASED = {
    "allenai/led-base-16384": dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                   encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                   decoder_ffn_dim=3072, attention_window=1024,
                                   max_encoder_position_embeddings=16384, max_decoder_position_embeddings=1024),
    "allenai/led-large-16384": dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                                    encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                                    decoder_ffn_dim=4096, attention_window=1024,
                                    max_encoder_position_embeddings=16384, max_decoder_position_embeddings=1024),
}

ATTENTION_IMPLEMENTATIONS = ("xla", "splash", "auto")
# LEDConfig fields that are run-time choices of this library, not part of HF's config.json
RUNTIME_FIELDS = ("attention_implementation",)

PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# HF aliases (`attribute_map` in transformers' LEDConfig) accepted on input.
_ALIASES = {
    "num_attention_heads": "encoder_attention_heads",
    "hidden_size": "d_model",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "init_std",
    "num_hidden_layers": "encoder_layers",
}
# Keys that HF derives from other keys; we rebuild them in `to_hf`.
_DERIVED = ("label2id",)


def id_tuple(value: int | tuple[int, ...] | None) -> tuple[int, ...]:
    """A token-id setting that may be one id, several or none (eos_token_id) as a tuple."""
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


class ConfigError(ValueError):
    """An invalid LED configuration value; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class LEDConfig:
    vocab_size: int = 50265
    max_encoder_position_embeddings: int = 16384
    max_decoder_position_embeddings: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    use_cache: bool = True
    is_encoder_decoder: bool = True
    activation_function: str = "gelu"
    d_model: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    decoder_start_token_id: int = 2
    classifier_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 2
    # One even window per encoder layer; an int given to the constructor or in config.json is
    # broadcast to every layer.
    attention_window: tuple[int, ...] | int = 512
    tie_word_embeddings: bool = True
    num_labels: int = 2
    problem_type: str | None = None
    id2label: tuple[tuple[int, str], ...] | None = None
    architectures: tuple[str, ...] | None = None
    # Every other key of config.json, as (key, JSON text) pairs, kept for the round trip.
    extra: tuple[tuple[str, str], ...] = ()
    # How the encoder's local attention runs; a run-time choice that config.json does not carry:
    # "xla" (plain XLA ops, the default and the oracle), "splash" (the Pallas splash-attention kernel:
    # compiled on TPU, interpret mode elsewhere; refused where attention dropout runs (training with
    # attention_dropout > 0) and for attention maps) or "auto"
    # (splash on a TPU backend unless a call needs attention dropout or attention maps; else xla).
    # See `model/splash.py` and `attention.choose_implementation`.
    attention_implementation: str = "xla"

    def __post_init__(self):
        window = self.attention_window
        if isinstance(window, (list, tuple)):
            window = tuple(int(w) for w in window)
        elif isinstance(window, int) and not isinstance(window, bool):
            window = (window,) * self.encoder_layers
        else:
            raise ConfigError(
                f"attention_window must be an even int or a list of one even int per encoder layer, "
                f"got {self.attention_window!r}"
            )
        object.__setattr__(self, "attention_window", window)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.architectures, list):
            object.__setattr__(self, "architectures", tuple(self.architectures))
        if self.id2label is not None:
            pairs = self.id2label.items() if isinstance(self.id2label, Mapping) else self.id2label
            id2label = tuple(sorted((int(k), str(v)) for k, v in pairs))
            object.__setattr__(self, "id2label", id2label)
            object.__setattr__(self, "num_labels", len(id2label))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self):
        def need(ok, field, msg):
            if not ok:
                raise ConfigError(f"LEDConfig.{field}: {msg}")

        for f in ("vocab_size", "max_encoder_position_embeddings", "max_decoder_position_embeddings",
                  "encoder_layers", "decoder_layers", "encoder_ffn_dim", "decoder_ffn_dim",
                  "encoder_attention_heads", "decoder_attention_heads", "d_model", "num_labels"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f,
                 f"must be a positive integer, got {v!r}")
            # token ids, positions and shapes are int32 in the compiled programs
            need(v < 2**31, f, f"{v} does not fit the int32 ids and shapes of the model; it must be below 2**31")
        for heads in ("encoder_attention_heads", "decoder_attention_heads"):
            need(self.d_model % getattr(self, heads) == 0, heads,
                 f"d_model ({self.d_model}) must be divisible by {heads} ({getattr(self, heads)}); "
                 f"choose a head count that divides d_model")
        need(self.activation_function in ACTIVATIONS, "activation_function",
             f"unknown activation {self.activation_function!r}; use one of {', '.join(ACTIVATIONS)}")
        for f in ("dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
                  "encoder_layerdrop", "decoder_layerdrop"):
            v = getattr(self, f)
            need(isinstance(v, (int, float)) and 0.0 <= v <= 1.0, f,
                 f"must be a probability in [0, 1], got {v!r}")
        need(len(self.attention_window) == self.encoder_layers, "attention_window",
             f"has {len(self.attention_window)} values but encoder_layers is {self.encoder_layers}; "
             f"give one window per encoder layer or a single int")
        for i, w in enumerate(self.attention_window):
            need(w >= 2 and w % 2 == 0, "attention_window",
                 f"window {w} of layer {i} must be an even number >= 2 (it is split into two equal "
                 f"halves around each token); use {max(2, w + (w % 2))}")
        need(0 <= self.pad_token_id < self.vocab_size, "pad_token_id",
             f"{self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})")
        need(0 <= self.decoder_start_token_id < self.vocab_size, "decoder_start_token_id",
             f"{self.decoder_start_token_id} is outside the vocabulary [0, {self.vocab_size})")
        need(self.attention_implementation in ATTENTION_IMPLEMENTATIONS, "attention_implementation",
             f"unknown implementation {self.attention_implementation!r}; use one of "
             f"{', '.join(ATTENTION_IMPLEMENTATIONS)}")
        need(self.problem_type in PROBLEM_TYPES, "problem_type",
             f"unknown problem type {self.problem_type!r}; use one of {PROBLEM_TYPES}")
        if self.architectures:
            unknown = [a for a in self.architectures if a not in ARCHITECTURE_TO_HEAD]
            need(not unknown, "architectures",
                 f"{unknown} is not an LED architecture; expected one of {sorted(ARCHITECTURE_TO_HEAD)}")

    # ------------------------------------------------------------------ derived values
    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return id_tuple(self.eos_token_id)

    @property
    def head(self) -> str | None:
        """The model head named by `architectures`, or None."""
        if not self.architectures:
            return None
        return ARCHITECTURE_TO_HEAD[self.architectures[0]]

    def replace(self, **changes) -> "LEDConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf(cls, source: str | os.PathLike | Mapping[str, Any]) -> "LEDConfig":
        """Reads an HF LED config: a dict, a `config.json` path, or a directory holding one."""
        if isinstance(source, Mapping):
            data = dict(source)
        else:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no LED config at {path}: expected a config.json written by "
                                        f"transformers' save_pretrained or by led-flax")
            with open(path, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path} is not valid JSON ({e}); restore the file") from e
        model_type = data.get("model_type", "led")
        if model_type != "led":
            raise ConfigError(f"config.model_type is {model_type!r}, not 'led': this is not an LED "
                              f"checkpoint")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", *RUNTIME_FIELDS}
        kwargs, extra = {}, []
        for key, value in data.items():
            field = _ALIASES.get(key, key)
            if field in names:
                kwargs[field] = value
            elif key in _DERIVED or key == "model_type":
                continue
            else:
                extra.append((key, json.dumps(value, sort_keys=True)))
        try:
            return cls(**kwargs, extra=tuple(extra))
        except TypeError as e:  # a value of the wrong type reaching __post_init__
            raise ConfigError(f"invalid LED config: {e}") from e

    def to_hf(self) -> dict[str, Any]:
        """The `config.json` dict that transformers' `LEDConfig.from_dict` reads back."""
        out: dict[str, Any] = {json_key: json.loads(text) for json_key, text in self.extra}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "id2label", "num_labels", *RUNTIME_FIELDS):
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        window = self.attention_window
        out["attention_window"] = window[0] if len(set(window)) == 1 else list(window)
        if self.id2label is not None or self.num_labels != 2:
            id2label = dict(self.id2label or ((i, f"LABEL_{i}") for i in range(self.num_labels)))
            out["id2label"] = {str(k): v for k, v in id2label.items()}
            out["label2id"] = {v: k for k, v in id2label.items()}
        if self.architectures is None:
            out.pop("architectures")
        out["model_type"] = "led"
        return dict(sorted(out.items()))

    def save(self, directory: str | os.PathLike) -> str:
        from led_flax.utils.files import write_atomic
        return write_atomic(os.path.join(os.fspath(directory), "config.json"), json.dumps(self.to_hf(), indent=2) + "\n")
