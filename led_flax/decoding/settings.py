"""The generation settings split in two: the compiled program's static key and per-row traced values.

A `GenerationConfig` holds both kinds. `split(config, batch, seeds)` gives:
- `static`: the settings that change shapes or control flow (`num_beams`, `do_sample`, the length
  limits, `top_k`, `no_repeat_ngram_size`, token lists, ...) and, for each traced setting, only
  whether it is on. It keys the jitted program, so it is hashable and carries no traced number.
- `values`: a `GenerationValues` of per-row arrays ([batch]) with the numbers: `length_penalty`,
  `temperature`, `top_p`, `typical_p`, `epsilon_cutoff`, `eta_cutoff`, `repetition_penalty`,
  `encoder_repetition_penalty`, the exponential decay factor and each row's random seed. Two calls
  whose settings differ only in these numbers run one compiled program (gemma's sampler and t5x's
  decoding keep their numbers out of the program's key for the same reason).

Whether a setting is on stays static: a warper that is on costs work at every step (top-p sorts
the vocabulary), so a setting at its neutral value (`temperature` 1.0, `top_p` 1.0,
`repetition_penalty` 1.0, ...) leaves it out of the program, and turning it on compiles a second
program. Between two values that are both on, nothing compiles. In a batch where a setting is on for
some rows, a row at the neutral value gets exactly what transformers gives without the setting.
The sampling warpers count as off when not sampling (transformers ignores them then).

Each traced number is rounded to float32 the way transformers' arithmetic with a Python float
rounds it (`1 - top_p` and `1 / encoder_repetition_penalty` are taken in float64 first, and
the decay's `factor ** i - 1` table too).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
from flax import struct

from .generation_config import GenerationConfig

# each traced setting -> its neutral value (the setting is off there); None: always on, no switch
TRACED: dict[str, float | None] = {
    "length_penalty": None, "temperature": 1.0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0}
# the warpers: transformers applies them only when sampling
SAMPLING_ONLY = ("temperature", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
# what the static key holds for a traced setting that is on: a valid value, the same for every value
_ON = {"length_penalty": 1.0, "temperature": 2.0, "top_p": 0.5, "typical_p": 0.5, "epsilon_cutoff": 0.5,
       "eta_cutoff": 0.5, "repetition_penalty": 2.0, "encoder_repetition_penalty": 2.0}
_DECAY_ON = 1.0  # the static key's exponential decay factor: only the start is static
MAX_SEED = 2 ** 32 - 1


@struct.dataclass
class GenerationValues:
    """The traced numbers of the generation settings, one per input row (b inputs; a row's beams
    share its values). float32 unless said; see the module docstring for their rounding.

    length_penalty: [b] the exponent of beam search's length normalisation.
    temperature: [b] what the logits are divided by when sampling.
    top_p_cutoff: [b] 1 - top_p: the probability mass top-p removes at most.
    typical_p: [b] typical sampling's mass. epsilon_cutoff, eta_cutoff: [b].
    repetition_penalty: [b]. encoder_repetition_inverse: [b] 1 / encoder_repetition_penalty.
    decay_gain: [b, max_length + 1] factor ** i - 1 of exponential_decay_length_penalty, at i tokens
        past its start ([b, 1] zeros when it is off).
    seed: [b] uint32, folded into the call's key: row r samples from fold_in(prng_key, seed[r]).
    """

    length_penalty: Any
    temperature: Any
    top_p_cutoff: Any
    typical_p: Any
    epsilon_cutoff: Any
    eta_cutoff: Any
    repetition_penalty: Any
    encoder_repetition_inverse: Any
    decay_gain: Any
    seed: Any


class SplitSettings(NamedTuple):
    static: GenerationConfig  # the program's key
    values: GenerationValues  # its traced arguments


def is_on(config: GenerationConfig, name: str) -> bool:
    """Whether the traced setting `name` takes part in the program: a value off its neutral one in
    some row (for a sampling warper, only when sampling)."""
    neutral = TRACED[name]
    if neutral is None:
        return True
    if name in SAMPLING_ONLY and not config.do_sample:
        return False
    return any(v != neutral for v in rows_of(getattr(config, name)))


def per_row_fields(config: GenerationConfig) -> list[str]:
    """The traced settings of `config` that hold one value per row (a tuple), the decay included."""
    fields = [name for name in TRACED if isinstance(getattr(config, name), tuple)]
    decay = config.exponential_decay_length_penalty
    return fields + (["exponential_decay_length_penalty"] if decay is not None and isinstance(decay[1], tuple)
                     else [])


def rows_of(value) -> tuple[float, ...]:
    """A traced setting's values: a tuple of per-row values as given, a scalar as one value."""
    return tuple(value) if isinstance(value, tuple) else (value,)


def static_part(config: GenerationConfig) -> GenerationConfig:
    """`config` with each traced setting replaced by its neutral value when off and one fixed value
    when on, the decay factor by 1.0, and `top_k` by its default when not sampling: equal for
    settings that differ only in traced numbers. It keys the program; nothing reads a number of it."""
    changes: dict[str, Any] = {name: (_ON[name] if is_on(config, name) else TRACED[name]) for name in TRACED}
    if config.exponential_decay_length_penalty is not None:
        changes["exponential_decay_length_penalty"] = (config.exponential_decay_length_penalty[0], _DECAY_ON)
    if not config.do_sample:
        changes["top_k"] = GenerationConfig.top_k
    static = config.replace(**changes)
    resolved_for = getattr(config, "_resolved_for", None)
    if resolved_for is not None:  # resolution fills tokens and lengths only, which the key keeps as they are
        object.__setattr__(static, "_resolved_for", resolved_for)
    return static


def _per_row(config: GenerationConfig, name: str, values, batch: int) -> np.ndarray:
    """[batch] float64: a scalar broadcast, or one value per row. ValueError for a count that is not
    the batch's."""
    rows = rows_of(values)
    if len(rows) == 1:
        return np.full((batch,), float(rows[0]), np.float64)
    if len(rows) != batch:
        raise ValueError(f"GenerationConfig.{name} has {len(rows)} values for a batch of {batch} inputs; give one "
                         f"value per input, or one value for all")
    return np.asarray(rows, np.float64)


def check_seeds(seeds, batch: int) -> np.ndarray:
    """[batch] uint32 from per-row seeds (integers in [0, 2**32)); default: the row index, so that
    repeated inputs draw different samples. ValueError naming the problem otherwise."""
    if seeds is None:
        return np.arange(batch, dtype=np.uint32)
    seeds = list(np.asarray(seeds).reshape(-1)) if not isinstance(seeds, (list, tuple)) else list(seeds)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} inputs; give one seed per input")
    bad = [s for s in seeds if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral)
           or not 0 <= int(s) <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must be integers in [0, 2**32), got {bad[0]!r}")
    return np.asarray([int(s) for s in seeds], np.uint32)


def _decay_table(factors: np.ndarray, max_length: int) -> np.ndarray:
    """[b, max_length + 1] float32: factor ** i - 1 in float64 (inf past the largest float64), then
    rounded, as transformers' Python scalar is; i = 0 gives 0."""
    table = np.zeros((len(factors), max_length + 1), np.float64)
    for r, factor in enumerate(factors):
        for i in range(1, max_length + 1):
            try:
                table[r, i] = pow(float(factor), i) - 1
            except OverflowError:
                table[r, i] = np.inf
    return table.astype(np.float32)


def split(config: GenerationConfig, batch: int, seeds=None) -> SplitSettings:
    """The static key and the traced values of `config` (resolved) for `batch` input rows.

    seeds: one integer in [0, 2**32) per row (default: the row index).
    Raises ValueError for a per-row setting or seeds whose count is not `batch`.
    """
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    row = {name: _per_row(config, name, getattr(config, name), batch) for name in TRACED}
    decay = config.exponential_decay_length_penalty
    if decay is None:
        gain = np.zeros((batch, 1), np.float32)
    else:
        gain = _decay_table(_per_row(config, "exponential_decay_length_penalty", decay[1], batch), config.max_length)
    values = GenerationValues(
        length_penalty=f32(row["length_penalty"]), temperature=f32(row["temperature"]),
        top_p_cutoff=f32(1.0 - row["top_p"]), typical_p=f32(row["typical_p"]),
        epsilon_cutoff=f32(row["epsilon_cutoff"]), eta_cutoff=f32(row["eta_cutoff"]),
        repetition_penalty=f32(row["repetition_penalty"]),
        encoder_repetition_inverse=f32(1.0 / row["encoder_repetition_penalty"]), decay_gain=gain,
        seed=check_seeds(seeds, batch))
    return SplitSettings(static=static_part(config), values=values)


def stack(configs) -> GenerationConfig:
    """One GenerationConfig for a batch whose rows bring their own settings (a server's requests, one
    config per row): each traced setting becomes the tuple of the rows' values, the static part is
    theirs. Raises ValueError when the rows differ in the static part (they need different programs:
    batch them apart) or a row already holds per-row values."""
    configs = list(configs)
    keys = {static_part(c) for c in configs}
    if len(keys) != 1:
        raise ValueError("these rows' settings differ in what the program is compiled for (num_beams, do_sample, "
                         "the lengths, which processors are on, ...); batch them apart")
    rows_given = [name for c in configs for name in per_row_fields(c)]
    if rows_given:
        raise ValueError(f"stack takes one value of each setting per row; {rows_given[0]} holds several")
    changes: dict[str, Any] = {name: tuple(getattr(c, name) for c in configs) for name in TRACED}
    decay = configs[0].exponential_decay_length_penalty
    if decay is not None:
        changes["exponential_decay_length_penalty"] = (decay[0], tuple(c.exponential_decay_length_penalty[1]
                                                                       for c in configs))
    stacked = configs[0].replace(**changes)
    resolved_for = getattr(configs[0], "_resolved_for", None)
    if resolved_for is not None and all(c.is_resolved_for(resolved_for) for c in configs):
        object.__setattr__(stacked, "_resolved_for", resolved_for)
    return stacked
