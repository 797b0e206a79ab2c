"""transformers' sampling warpers (`logits_process.py`), in the order of its `_get_logits_processor`:
temperature, top-k, top-p, typical, epsilon, eta. They run only when sampling, after the processors.

scores: [N, V] float32 rows; min_tokens_to_keep: 1, or (number of eos ids + 1) with beam sampling, as
transformers sets it. A filtered token's score is -inf; the others keep their values exactly. Each
filter takes its setting as a number or as one value per row ([N]: one batch, several requests'
settings); inside the compiled loop they come from `settings.GenerationValues`, traced. A row at the
setting's neutral value (top_p 1.0, typical_p 1.0) keeps its scores as they are, as transformers
leaves the warper out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .generation_config import GenerationConfig
from .settings import GenerationValues, is_on

NEG_INF = -float("inf")


def per_row(x, rows: int):
    """A per-input value [b] -> [rows, 1], each input's value repeated for its rows // b beams; a
    number -> itself (it broadcasts)."""
    if jnp.ndim(x) == 0:
        return x
    return jnp.repeat(x, rows // x.shape[0], axis=0)[:, None]


def apply_warpers(scores, cfg: GenerationConfig, values: GenerationValues, min_tokens_to_keep: int):
    """Every warper that `cfg` switches on, in transformers' order, with each input's values.
    scores: [N, V] -> [N, V]."""
    n = scores.shape[0]
    if is_on(cfg, "temperature"):
        scores = scores / per_row(values.temperature, n).astype(scores.dtype)
    if cfg.top_k and cfg.top_k > 0:
        scores = top_k_filter(scores, cfg.top_k, min_tokens_to_keep)
    if is_on(cfg, "top_p"):
        scores = _top_p(scores, per_row(values.top_p_cutoff, n), min_tokens_to_keep)
    if is_on(cfg, "typical_p"):
        scores = typical_filter(scores, values.typical_p, min_tokens_to_keep)
    if is_on(cfg, "epsilon_cutoff"):
        scores = epsilon_filter(scores, values.epsilon_cutoff, min_tokens_to_keep)
    if is_on(cfg, "eta_cutoff"):
        scores = eta_filter(scores, values.eta_cutoff, min_tokens_to_keep)
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


def top_p_filter(scores, top_p, min_tokens_to_keep: int = 1):
    """TopPLogitsWarper: the least likely tokens whose probabilities sum to at most 1 - top_p are -inf.
    top_p: a number or [N] numbers (host values: 1 - top_p is taken in float64, as transformers'
    Python float is, then rounded to the scores' dtype)."""
    cutoff = 1.0 - np.asarray(top_p, np.float64)
    return _top_p(scores, per_row(jnp.asarray(cutoff, scores.dtype), scores.shape[0]), min_tokens_to_keep)


def _top_p(scores, cutoff, min_tokens_to_keep: int):
    """top_p_filter with cutoff = 1 - top_p given: [] or [N, 1], traced. A row whose cutoff is 0
    (top_p 1.0) is left as it is."""
    order = jnp.argsort(scores, axis=-1)  # [N, V] ascending
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1), axis=-1)  # [N, V]
    remove_sorted = (cum <= cutoff).at[:, -min_tokens_to_keep:].set(False)
    return jnp.where(_unsort(remove_sorted, order) & (cutoff > 0), NEG_INF, scores)


def _column(value, scores):
    """A setting as a number or [N] -> [] or [N, 1] in the scores' dtype."""
    return per_row(jnp.asarray(value, scores.dtype), scores.shape[0])


def typical_filter(scores, mass, min_tokens_to_keep: int = 1):
    """TypicalLogitsWarper: tokens sorted by how far their surprise -log p lies from the entropy; past
    the first whose cumulative probability reaches `mass` (a number or [N]), those farther away than
    it are -inf. A row whose mass is 1.0 is left as it is."""
    mass = _column(mass, scores)
    normalized = jax.nn.log_softmax(scores, axis=-1)
    entropy = -jnp.nansum(normalized * jnp.exp(normalized), axis=-1, keepdims=True)  # [N, 1]
    shifted = jnp.abs(-normalized - entropy)
    order = jnp.argsort(shifted, axis=-1)  # ascending and stable, as torch's CPU sort
    sorted_shifted = jnp.take_along_axis(shifted, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, axis=-1), axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum < mass, axis=-1, keepdims=True), scores.shape[-1] - 1)  # [N, 1]
    remove_sorted = sorted_shifted > jnp.take_along_axis(sorted_shifted, last, axis=-1)
    remove_sorted = remove_sorted.at[:, :min_tokens_to_keep].set(False)
    return jnp.where(_unsort(remove_sorted, order) & (mass < 1), NEG_INF, scores)


def epsilon_filter(scores, epsilon, min_tokens_to_keep: int = 1):
    """EpsilonLogitsWarper: tokens of probability below epsilon (a number or [N]; 0: off) are -inf,
    but never the min_tokens_to_keep most likely."""
    remove = jax.nn.softmax(scores, axis=-1) < _column(epsilon, scores)
    remove &= scores < _kth_largest(scores, min_tokens_to_keep)
    return jnp.where(remove, NEG_INF, scores)


def eta_filter(scores, epsilon, min_tokens_to_keep: int = 1):
    """EtaLogitsWarper: tokens of probability below eta = min(epsilon, sqrt(epsilon) exp(-entropy)) are
    -inf, but never the min_tokens_to_keep most likely. epsilon: a number or [N] (0: off). The entropy
    is torch's Categorical's, with epsilon a float32 scalar as there."""
    normalized = scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True)
    probs = jax.nn.softmax(normalized, axis=-1)
    clamped = jnp.maximum(normalized, jnp.finfo(scores.dtype).min)
    entropy = -jnp.sum(clamped * probs, axis=-1, keepdims=True)  # [N, 1]
    eps = per_row(jnp.asarray(epsilon, jnp.float32), scores.shape[0])
    eta = jnp.minimum(eps.astype(scores.dtype), jnp.sqrt(eps).astype(scores.dtype) * jnp.exp(-entropy))
    remove = jax.nn.softmax(scores, axis=-1) < eta
    remove &= scores < _kth_largest(scores, min_tokens_to_keep)
    return jnp.where(remove, NEG_INF, scores)
