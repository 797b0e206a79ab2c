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


def check_labels(labels, vocab_size: int, name: str = "labels") -> None:
    """Raises ValueError naming `name` when a label is neither -100 (ignored) nor an id in [0, vocab_size):
    the reference raises "Target ... out of bounds", JAX would read NaN (an id past the table) or wrap
    (-1 reads the last id)."""
    if labels is None or is_traced(labels):
        return
    a = np.asarray(labels)
    bad = (a != -100) & ((a < 0) | (a >= vocab_size))
    if bad.any():
        found = sorted(set(a[bad].tolist()))[:8]
        raise ValueError(f"{name} holds values that are neither -100 (ignored) nor a token id in [0, {vocab_size}): "
                         f"{found}; mark positions to ignore with -100 and check the tokenizer")


def check_binary_mask(mask, name: str) -> None:
    """Raises ValueError naming `name` when a (host) mask holds values other than 0 and 1."""
    if mask is None or is_traced(mask):
        return
    a = np.asarray(mask)
    bad = (a != 0) & (a != 1)
    if bad.any():
        raise ValueError(f"{name} holds values other than 0 and 1: {sorted(set(a[bad].tolist()))[:8]}; use 1 for "
                         f"tokens to attend to and 0 for padding")


def merged_encoder_mask(attention_mask, global_attention_mask):
    """The encoder's mask as the reference reads it (Longformer's convention): attention_mask x
    (global_attention_mask + 1), so 0 (or less) is padding, 1 local attention, more than 1 global
    attention. A 2 in attention_mask alone marks a global token; 4.x's -1 in global_attention_mask
    masks its token. Works on numpy and traced arrays; either mask may be None."""
    if attention_mask is None and global_attention_mask is None:
        return None
    if global_attention_mask is None:
        return attention_mask
    if attention_mask is None:
        return global_attention_mask + 1
    return attention_mask * (global_attention_mask + 1)


def token_roles(merged):
    """merged mask [b, n] (see `merged_encoder_mask`) -> (real, is_global), both [b, n] bool."""
    return merged >= 1, merged > 1


def check_decoder_length(length: int, config, source: str) -> None:
    """Raises ValueError naming `source` (what the decoder input came from: labels, input_ids, ...)
    when it is longer than the decoder's position table."""
    if length > config.max_decoder_position_embeddings:
        raise ValueError(f"the decoder input has {length} tokens but the decoder has "
                         f"{config.max_decoder_position_embeddings} positions; shorten {source}")


def shift_tokens_right(input_ids, pad_token_id: int, decoder_start_token_id: int):
    """[b, t] -> [b, t]: start token first, the rest shifted right, -100 replaced by padding."""
    input_ids = jnp.asarray(input_ids)
    start = jnp.full((input_ids.shape[0], 1), decoder_start_token_id, input_ids.dtype)
    shifted = jnp.concatenate([start, input_ids[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)
