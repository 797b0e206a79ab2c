"""Length buckets: the fixed set of padded input lengths that inference and training compile for.

Powers of two times the padding unit (`led_flax.parallel.sequence.length_unit`: the largest
attention window, or whole blocks on every sequence device), so a corpus compiles one program per
bucket and every bucket is a whole number of attention blocks.
"""

from __future__ import annotations

from typing import Sequence

from led_flax.parallel.sequence import length_unit


def default_buckets(config, smallest: int = 512, top: int | None = None, devices: int = 1) -> list[int]:
    """Powers of two times `length_unit(config, devices)` (`devices`: how many devices each document's
    tokens are split over), from `smallest` up, ending at `top` (default: the encoder's positions,
    rounded up to the unit). config: an LEDConfig. Returns ascending token counts."""
    window = length_unit(config, devices)
    top = config.max_encoder_position_embeddings if top is None else top
    top = -(-top // window) * window
    size = max(window, -(-smallest // window) * window)
    out = []
    while size < top:
        out.append(size)
        size *= 2
    return out + [top]


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens. Raises ValueError when none does."""
    for b in sorted(buckets):
        if b >= length:
            return b
    raise ValueError(f"{length} tokens exceed the largest bucket {max(buckets)}")
