"""Length buckets: the fixed set of padded input lengths that inference and training compile for.

Powers of two times the largest attention window, so a corpus compiles one program per bucket and
every bucket is a whole number of attention blocks.
"""

from __future__ import annotations

from typing import Sequence


def default_buckets(config, smallest: int = 512, top: int | None = None, unit: int | None = None) -> list[int]:
    """Powers of two times `unit` (default the largest window; with the sequence split over devices,
    `sequence.length_unit`), from `smallest` up, ending at `top` (default: the encoder's positions,
    rounded up to the unit). config: an LEDConfig. Returns ascending token counts."""
    window = unit or max(config.attention_window)
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
