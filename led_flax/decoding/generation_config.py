"""`GenerationConfig`: HF's generation settings (those LED's checkpoints use), read from
`generation_config.json` or the old generation fields of `config.json`.

Every setting of transformers 5's `GenerationConfig` falls in one of three groups:
- implemented: a field here, applied as transformers applies it;
- bookkeeping (`transformers_version`, `output_*`, `use_cache`, the assistant's tuning, ...): what
  `generate` returns or how fast it runs, never which ids; ignored silently;
- not implemented (`sequence_bias`, `constraints`, `min_p`, ...): `from_hf` warns with a
  `GenerationSettingWarning` naming each one that is switched on, since the ids would differ from
  transformers'. Passing one to `generate` or `replace` is a TypeError.
Group beam search (`num_beam_groups` > 1) is a ValueError: transformers 5 moved it to the hub, so
there is no reference to match.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import warnings
from typing import Any

from led_flax.model.config import ConfigError, id_tuple

# bookkeeping: output format, caching and speed; the ids do not depend on them
_BOOKKEEPING = frozenset((
    "transformers_version", "_from_model_config", "_commit_hash", "output_attentions", "output_hidden_states",
    "output_scores", "output_logits", "return_dict_in_generate", "use_cache", "cache_implementation",
    "cache_config", "max_cache_len", "compile_config", "disable_compile", "prefill_chunk_size",
    "continuous_batching_config", "low_memory", "is_assistant", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "assistant_confidence_threshold", "assistant_lookbehind",
    "target_lookbehind", "prompt_lookup_num_tokens", "max_matching_ngram_size", "assistant_early_exit",
    "speculation_type", "use_mtp"))
# transformers settings that change the ids and that led-flax does not implement -> their "off" values
_NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "sequence_bias": (), "guidance_scale": (1, 1.0), "constraints": (), "force_words_ids": (),
    "watermarking_config": (), "min_p": (), "top_h": (), "remove_invalid_values": (False,),
    "token_healing": (False,), "stop_strings": (), "max_time": (), "penalty_alpha": (0, 0.0),
    "dola_layers": (), "assistant_ensemble_weight": ()}
_TOKEN_FIELDS = ("decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id")


class GenerationSettingWarning(UserWarning):
    """A generation setting of a checkpoint that led-flax does not implement and ignores; the ids may
    differ from transformers'. The message is one line naming the setting and where it came from."""


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _int_tuple(name: str, value, allow_none: bool = True):
    """A tuple of token ids (>= 0) from a list or tuple; ValueError naming `name` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0
                                                for t in value):
        return tuple(int(t) for t in value)
    raise ValueError(f"GenerationConfig.{name} must be a list of token ids (integers >= 0), got {value!r}")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """HF's generation settings, hashable (tuples, not lists) so that it keys compiled programs.

    The numbers that do not change the program (`length_penalty`, `temperature`, `top_p`,
    `typical_p`, `epsilon_cutoff`, `eta_cutoff`, `repetition_penalty`, `encoder_repetition_penalty`
    and the factor of `exponential_decay_length_penalty`) may each be one value, or a tuple of one
    value per input row, so that one batch carries several requests' settings; they are traced
    arguments of the compiled program, not part of its key (`led_flax.decoding.settings`).

    Beyond the length, search and sampling settings: `encoder_no_repeat_ngram_size` (n-grams of the
    input that the output may not repeat), `encoder_repetition_penalty` (> 1 favours the input's
    tokens), `bad_words_ids` (token sequences never generated), `suppress_tokens` (ids never
    generated), `begin_suppress_tokens` (ids not generated first), `exponential_decay_length_penalty`
    ((start, factor): eos is favoured by factor ** (tokens past start)), `renormalize_logits`
    (log-softmax after every processor), and the sampling warpers `typical_p`, `epsilon_cutoff`,
    `eta_cutoff`. `num_beam_groups` and `diversity_penalty` are read so that group beam search is
    refused, not silently replaced. Raises ValueError naming the field and the fix for a bad value.
    """

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float | tuple[float, ...] = 1.0
    early_stopping: bool | str = False
    temperature: float | tuple[float, ...] = 1.0
    top_k: int = 50
    top_p: float | tuple[float, ...] = 1.0
    typical_p: float | tuple[float, ...] = 1.0
    epsilon_cutoff: float | tuple[float, ...] = 0.0
    eta_cutoff: float | tuple[float, ...] = 0.0
    no_repeat_ngram_size: int = 0
    encoder_no_repeat_ngram_size: int = 0
    repetition_penalty: float | tuple[float, ...] = 1.0
    encoder_repetition_penalty: float | tuple[float, ...] = 1.0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    exponential_decay_length_penalty: tuple[int, float | tuple[float, ...]] | None = None
    renormalize_logits: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
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
        self._check_per_row("length_penalty", lambda v: True, "any real number")
        self._check_per_row("temperature", lambda v: v > 0 or not self.do_sample,
                            "> 0 when sampling (use do_sample=False for greedy)")
        self._check_per_row("top_p", lambda v: 0.0 < v <= 1.0, "in (0, 1] (1.0: off)")
        self._check_per_row("repetition_penalty", lambda v: v > 0, "> 0 (1.0: off; above 1 penalises repeats)")
        self._check_new_settings()

    def _check_per_row(self, name: str, ok, rule: str) -> None:
        """A traced setting (`led_flax.decoding.settings`): a real number, or one per input row (a list
        or tuple, kept as a tuple); ValueError naming `name` and `rule` for a bad one."""
        value = getattr(self, name)
        rows = value if isinstance(value, (list, tuple)) else (value,)
        bad = [v for v in rows if not (_is_real(v) and ok(v))]
        if not rows or bad:
            raise ValueError(f"GenerationConfig.{name} must be {rule}, or a list of such values, one per input; got "
                             f"{value!r}")
        if isinstance(value, (list, tuple)):
            object.__setattr__(self, name, tuple(float(v) for v in value))

    def _check_new_settings(self):
        """The settings of released summarization checkpoints beyond the basic ones, and group beam search."""
        if not (isinstance(self.num_beam_groups, int) and self.num_beam_groups >= 1):
            raise ValueError(f"GenerationConfig.num_beam_groups must be an integer >= 1, got {self.num_beam_groups!r}")
        if self.num_beam_groups > 1:
            raise ValueError(f"GenerationConfig.num_beam_groups={self.num_beam_groups}: group (diverse) beam search is "
                             f"not supported; transformers 5 moved it to the hub, so there is no reference to match. "
                             f"Set num_beam_groups to 1 (in generation_config.json, or as a keyword) for plain beam "
                             f"search")
        if not (isinstance(self.encoder_no_repeat_ngram_size, int) and self.encoder_no_repeat_ngram_size >= 0):
            raise ValueError(f"GenerationConfig.encoder_no_repeat_ngram_size must be an integer >= 0 (0: off), got "
                             f"{self.encoder_no_repeat_ngram_size!r}")
        self._check_per_row("encoder_repetition_penalty", lambda v: v > 0,
                            "> 0 (1.0: off; above 1 favours the input's tokens)")
        self._check_per_row("typical_p", lambda v: 0.0 < v <= 1.0, "in (0, 1] (1.0: off)")
        for f in ("epsilon_cutoff", "eta_cutoff"):
            self._check_per_row(f, lambda v: 0.0 <= v < 1.0, "in [0, 1) (0.0: off; the paper suggests 3e-4 to 4e-3)")
        if not isinstance(self.renormalize_logits, bool):
            raise ValueError(f"GenerationConfig.renormalize_logits must be true or false, got "
                             f"{self.renormalize_logits!r}")
        bad = self.bad_words_ids
        if bad is not None:
            if not isinstance(bad, (list, tuple)) or not bad or any(not isinstance(w, (list, tuple)) or not w
                                                                    for w in bad):
                raise ValueError(f"GenerationConfig.bad_words_ids must be a non-empty list of non-empty lists of "
                                 f"token ids, e.g. [[42], [7, 8]], got {bad!r}")
            object.__setattr__(self, "bad_words_ids", tuple(_int_tuple("bad_words_ids", w, False) for w in bad))
        for f in ("suppress_tokens", "begin_suppress_tokens"):
            object.__setattr__(self, f, _int_tuple(f, getattr(self, f)))
        decay = self.exponential_decay_length_penalty
        if decay is not None:
            factors = decay[1] if isinstance(decay, (list, tuple)) and len(decay) == 2 else None
            factors = factors if isinstance(factors, (list, tuple)) else (factors,)
            if not (isinstance(decay, (list, tuple)) and len(decay) == 2 and isinstance(decay[0], int)
                    and not isinstance(decay[0], bool) and decay[0] >= 0 and factors
                    and all(_is_real(f) and f > 0 for f in factors)):
                raise ValueError(f"GenerationConfig.exponential_decay_length_penalty must be (start, factor): the "
                                 f"generated tokens after which eos is favoured (an integer >= 0) and the factor per "
                                 f"token (> 0, e.g. 1.05; or a list of factors, one per input), got {decay!r}")
            factor = tuple(float(f) for f in decay[1]) if isinstance(decay[1], (list, tuple)) else float(decay[1])
            object.__setattr__(self, "exponential_decay_length_penalty", (int(decay[0]), factor))
        for f in ("forced_bos_token_id", "forced_eos_token_id"):  # transformers' validate() refuses these too
            forced = getattr(self, f)
            forced = set(id_tuple(forced))
            if self.suppress_tokens is not None and forced and forced <= set(self.suppress_tokens):
                raise ValueError(f"GenerationConfig: every token of {f} ({sorted(forced)}) is also in suppress_tokens, "
                                 f"so the forcing step has no token left; remove it from one of the two")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return id_tuple(self.eos_token_id)

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with `changes`; TypeError naming a setting that is unknown or not implemented."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        missing = sorted(unknown & set(_NOT_IMPLEMENTED))
        if missing:
            raise TypeError(f"generation settings {missing} are not implemented by led-flax; see "
                            f"led_flax.GenerationConfig for those that are")
        if unknown:
            raise TypeError(f"unknown generation settings {sorted(unknown)}; see led_flax.GenerationConfig")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, source=None, model_config=None) -> "GenerationConfig":
        """From a `generation_config.json` (a dict, the file, or a directory holding it), falling back to
        the old generation fields of `config.json`; special token ids default to the model config's.

        Warns (GenerationSettingWarning, one per setting) about each setting that changes the ids and is
        not implemented; ignores bookkeeping ones. Raises ConfigError for a file that is not JSON and
        ValueError, naming the source, for a bad value."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        data: dict[str, Any] = {}
        if model_config is not None:
            old = {k: json.loads(v) for k, v in model_config.extra}
            # config.json holds model settings too: only transformers' generation settings are read from it
            data.update({k: v for k, v in old.items() if k in fields and k not in _TOKEN_FIELDS})
            _warn_not_implemented({k: v for k, v in old.items() if k in _NOT_IMPLEMENTED}, "config.json")
            data.update(decoder_start_token_id=model_config.decoder_start_token_id,
                        bos_token_id=model_config.bos_token_id, pad_token_id=model_config.pad_token_id,
                        eos_token_id=model_config.eos_token_id)
        name, settings = "generation settings", {}
        if isinstance(source, dict):
            settings = source
        elif source is not None:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "generation_config.json")
            if os.path.isfile(path):
                name = path
                with open(path, encoding="utf-8") as f:
                    try:
                        settings = json.load(f)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise ConfigError(f"{path} is not valid JSON ({e}); restore the file or remove it") from e
                if not isinstance(settings, dict):
                    raise ConfigError(f"{path} holds a JSON {type(settings).__name__}, not an object of settings; "
                                      f"restore the file or remove it")
        _warn_not_implemented({k: v for k, v in settings.items() if k not in fields and k not in _BOOKKEEPING}, name)
        data.update(settings)
        # a null in the file means "unset": keep our default unless the default is itself None
        try:
            return cls(**{k: v for k, v in data.items() if k in fields and (v is not None or fields[k] is None)})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}: {e}") from e

    def resolved(self, model_config) -> "GenerationConfig":
        """Fills the special tokens from the model config and turns max/min_new_tokens into lengths.
        Raises ValueError for a max_length over the decoder's positions, a token id of bad_words_ids,
        suppress_tokens or begin_suppress_tokens outside the vocabulary (transformers ignores the last
        two silently), or bad_words_ids that ban only eos.

        The settings are resolved once: the result remembers the model config it was resolved for
        (not a field: it keys no program and is in no record), so `summarize` and `generate` take it
        as it is; `replace` gives a new, unresolved copy."""
        if self.is_resolved_for(model_config):
            return self
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
        if cfg.bad_words_ids is not None and all(len(w) == 1 and w[0] in cfg.eos_ids for w in cfg.bad_words_ids):
            # transformers drops a lone eos from bad_words_ids and then refuses the empty list
            raise ValueError(f"GenerationConfig.bad_words_ids {list(map(list, cfg.bad_words_ids))} bans only the eos "
                             f"token, which bad_words_ids never bans; use min_length or min_new_tokens to delay eos")
        v = model_config.vocab_size
        for f, ids in (("bad_words_ids", sum(cfg.bad_words_ids or (), ())), ("suppress_tokens", cfg.suppress_tokens),
                       ("begin_suppress_tokens", cfg.begin_suppress_tokens)):
            outside = sorted({t for t in ids or () if t >= v})
            if outside:
                raise ValueError(f"GenerationConfig.{f} holds token ids outside the vocabulary [0, {v}): {outside}; "
                                 f"check that the settings belong to this checkpoint")
        if cfg is self:
            cfg = dataclasses.replace(self)  # a copy to mark: `self` stays as the caller made it
        object.__setattr__(cfg, "_resolved_for", model_config)
        return cfg

    def is_resolved_for(self, model_config) -> bool:
        """Whether these settings came out of `resolved(model_config)` (an equal LEDConfig)."""
        return getattr(self, "_resolved_for", None) == model_config


def _warn_not_implemented(settings: dict[str, Any], source: str) -> None:
    """One GenerationSettingWarning per setting of `settings` that is switched on."""
    for key, value in sorted(settings.items()):
        if key in _NOT_IMPLEMENTED and (value is None or value == [] or value == {} or value in _NOT_IMPLEMENTED[key]):
            continue
        what = "is not implemented by led-flax" if key in _NOT_IMPLEMENTED else "is not a generation setting"
        warnings.warn(f"{source}: {key}={json.dumps(value)} {what} and is ignored; the generated ids may differ "
                      f"from transformers'", GenerationSettingWarning, stacklevel=3)
