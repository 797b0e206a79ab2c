"""Host-side checks and transforms of the inputs that every entry point shares.

JAX reads an out-of-range index as NaN or clamps it, silently; these checks run on the host before
tracing, so a user's mistake is an error naming the argument. Traced arrays (inside `jax.jit`) cannot
be checked and are passed through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_token_ids(ids, vocab_size: int, name: str) -> None:
    """Raises ValueError naming `name` when a token id of `ids` ([..., n] ints) is outside [0, vocab_size)."""
    if ids is None or is_traced(ids):
        return
    a = np.asarray(ids)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        found = sorted(set(a[bad].tolist()))[:8]
        raise ValueError(f"{name} holds token ids outside the vocabulary [0, {vocab_size}): {found}; "
                         f"check that the tokenizer belongs to this checkpoint (labels use -100 to "
                         f"ignore a position, inputs never do)")


def shift_tokens_right(input_ids, pad_token_id: int, decoder_start_token_id: int):
    """[b, t] -> [b, t]: start token first, the rest shifted right, -100 replaced by padding."""
    input_ids = jnp.asarray(input_ids)
    start = jnp.full((input_ids.shape[0], 1), decoder_start_token_id, input_ids.dtype)
    shifted = jnp.concatenate([start, input_ids[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)
