"""transformers' sampling warpers (`logits_process.py`), in the order of its `_get_logits_processor`:
temperature, top-k, top-p, typical, epsilon, eta. They run only when sampling, after the processors.

scores: [N, V] float32 rows; min_tokens_to_keep: 1, or (number of eos ids + 1) with beam sampling, as
transformers sets it. A filtered token's score is -inf; the others keep their values exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .generation_config import GenerationConfig

NEG_INF = -float("inf")


def apply_warpers(scores, cfg: GenerationConfig, min_tokens_to_keep: int):
    """Every warper that `cfg` switches on, in transformers' order. scores: [N, V] -> [N, V]."""
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k and cfg.top_k > 0:
        scores = top_k_filter(scores, cfg.top_k, min_tokens_to_keep)
    if cfg.top_p < 1.0:
        scores = top_p_filter(scores, cfg.top_p, min_tokens_to_keep)
    if cfg.typical_p < 1.0:
        scores = typical_filter(scores, cfg.typical_p, min_tokens_to_keep)
    if 0.0 < cfg.epsilon_cutoff < 1.0:
        scores = epsilon_filter(scores, cfg.epsilon_cutoff, min_tokens_to_keep)
    if 0.0 < cfg.eta_cutoff < 1.0:
        scores = eta_filter(scores, cfg.eta_cutoff, min_tokens_to_keep)
    return scores


def _kth_largest(scores, k: int):
    """[N, V] -> [N, 1]: the k-th largest score of each row (k clipped to V)."""
    return jax.lax.top_k(scores, min(k, scores.shape[-1]))[0][:, -1:]


def _unsort(remove_sorted, order):
    """Scatters a [N, V] mask given in `order` ([N, V] indices) back to vocabulary order."""
    rows = jnp.arange(order.shape[0])[:, None]
    return jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)


def top_k_filter(scores, top_k: int, min_tokens_to_keep: int = 1):
    """TopKLogitsWarper: all but the max(top_k, min_tokens_to_keep) largest are -inf (ties kept)."""
    kth = _kth_largest(scores, max(top_k, min_tokens_to_keep))
    return jnp.where(scores < kth, NEG_INF, scores)


def top_p_filter(scores, top_p: float, min_tokens_to_keep: int = 1):
    """TopPLogitsWarper: the least likely tokens whose probabilities sum to at most 1 - top_p are -inf."""
    order = jnp.argsort(scores, axis=-1)  # ascending
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1), axis=-1)
    remove_sorted = (cum <= (1 - top_p)).at[:, -min_tokens_to_keep:].set(False)
    return jnp.where(_unsort(remove_sorted, order), NEG_INF, scores)


def typical_filter(scores, mass: float, min_tokens_to_keep: int = 1):
    """TypicalLogitsWarper: tokens sorted by how far their surprise -log p lies from the entropy; past
    the first whose cumulative probability reaches `mass`, those farther away than it are -inf."""
    normalized = jax.nn.log_softmax(scores, axis=-1)
    entropy = -jnp.nansum(normalized * jnp.exp(normalized), axis=-1, keepdims=True)  # [N, 1]
    shifted = jnp.abs(-normalized - entropy)
    order = jnp.argsort(shifted, axis=-1)  # ascending and stable, as torch's CPU sort
    sorted_shifted = jnp.take_along_axis(shifted, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum < mass, axis=-1, keepdims=True), scores.shape[-1] - 1)  # [N, 1]
    remove_sorted = sorted_shifted > jnp.take_along_axis(sorted_shifted, last, axis=-1)
    remove_sorted = remove_sorted.at[:, :min_tokens_to_keep].set(False)
    return jnp.where(_unsort(remove_sorted, order), NEG_INF, scores)


def epsilon_filter(scores, epsilon: float, min_tokens_to_keep: int = 1):
    """EpsilonLogitsWarper: tokens of probability below epsilon are -inf, but never the
    min_tokens_to_keep most likely."""
    remove = jax.nn.softmax(scores, axis=-1) < epsilon
    remove &= scores < _kth_largest(scores, min_tokens_to_keep)
    return jnp.where(remove, NEG_INF, scores)


def eta_filter(scores, epsilon: float, min_tokens_to_keep: int = 1):
    """EtaLogitsWarper: tokens of probability below eta = min(epsilon, sqrt(epsilon) exp(-entropy)) are
    -inf, but never the min_tokens_to_keep most likely. The entropy is torch's Categorical's, with
    epsilon a float32 scalar as there."""
    normalized = scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True)
    probs = jax.nn.softmax(normalized, axis=-1)
    clamped = jnp.maximum(normalized, jnp.finfo(scores.dtype).min)
    entropy = -jnp.sum(clamped * probs, axis=-1, keepdims=True)  # [N, 1]
    eps = jnp.float32(epsilon)
    eta = jnp.minimum(eps.astype(scores.dtype), jnp.sqrt(eps).astype(scores.dtype) * jnp.exp(-entropy))
    remove = jax.nn.softmax(scores, axis=-1) < eta
    remove &= scores < _kth_largest(scores, min_tokens_to_keep)
    return jnp.where(remove, NEG_INF, scores)
