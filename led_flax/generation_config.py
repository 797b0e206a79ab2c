"""`GenerationConfig`: HF's generation settings (the subset LED uses), read from `generation_config.json`
or the old generation fields of `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# generation fields that old config.json files carry (transformers moved them to generation_config.json)
_OLD_CONFIG_FIELDS = ("max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size",
                      "early_stopping", "repetition_penalty", "forced_bos_token_id", "forced_eos_token_id",
                      "do_sample", "temperature", "top_k", "top_p", "num_return_sequences")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """HF's generation settings (the subset LED uses), hashable so that it keys compiled programs."""

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for f in ("eos_token_id", "forced_eos_token_id"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.num_beams < 1 or self.num_return_sequences < 1:
            raise ValueError("GenerationConfig: num_beams and num_return_sequences must be >= 1")
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ValueError(f"GenerationConfig: num_return_sequences ({self.num_return_sequences}) cannot exceed "
                             f"num_beams ({self.num_beams}) without sampling; raise num_beams")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"GenerationConfig.early_stopping must be True, False or 'never', "
                             f"got {self.early_stopping!r}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("GenerationConfig.temperature must be > 0 when sampling; use do_sample=False for greedy")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def replace(self, **changes) -> "GenerationConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation settings {sorted(unknown)}; see led_flax.GenerationConfig")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, source=None, model_config=None) -> "GenerationConfig":
        """From a `generation_config.json` (a dict, the file, or a directory holding it), falling back to
        the old generation fields of `config.json`; special token ids default to the model config's."""
        data: dict[str, Any] = {}
        if model_config is not None:
            data.update({k: json.loads(v) for k, v in model_config.extra if k in _OLD_CONFIG_FIELDS})
            data.update(decoder_start_token_id=model_config.decoder_start_token_id,
                        bos_token_id=model_config.bos_token_id, pad_token_id=model_config.pad_token_id,
                        eos_token_id=model_config.eos_token_id)
        if isinstance(source, dict):
            data.update(source)
        elif source is not None:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "generation_config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    data.update(json.load(f))
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        # a null in the file means "unset": keep our default unless the default is itself None
        return cls(**{k: v for k, v in data.items() if k in defaults and (v is not None or defaults[k] is None)})

    def resolved(self, model_config) -> "GenerationConfig":
        """Fills the special tokens from the model config and turns max/min_new_tokens into lengths."""
        cfg = self
        fill = {}
        for f, v in (("decoder_start_token_id", model_config.decoder_start_token_id),
                     ("pad_token_id", model_config.pad_token_id), ("eos_token_id", model_config.eos_token_id),
                     ("bos_token_id", model_config.bos_token_id)):
            if getattr(cfg, f) is None:
                fill[f] = v
        cfg = cfg.replace(**fill) if fill else cfg
        if cfg.max_new_tokens is not None:  # the decoder prompt is the start token alone
            cfg = cfg.replace(max_length=cfg.max_new_tokens + 1, max_new_tokens=None)
        if cfg.max_length > model_config.max_decoder_position_embeddings:
            raise ValueError(f"max_length {cfg.max_length} exceeds the decoder's "
                             f"{model_config.max_decoder_position_embeddings} positions; lower max_length")
        return cfg
