"""Losses as small pure functions, shared by the model heads and the train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits, labels, ignore_index: int = -100, label_smoothing: float = 0.0):
    """Summed token cross entropy and the number of counted tokens.

    logits: [..., vocab]; labels: [...] with `ignore_index` where no loss is taken. Returning the sum
    and the count (not a mean) lets a train step average over microbatches and devices exactly.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    if label_smoothing:
        vocab = logits.shape[-1]
        targets = optax.smooth_labels(jax.nn.one_hot(safe, vocab), label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
    else:
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    return jnp.sum(jnp.where(valid, losses, 0.0)), jnp.sum(valid)


def mean_token_cross_entropy(logits, labels, ignore_index: int = -100):
    """torch's `CrossEntropyLoss(ignore_index=-100)`: the mean over counted tokens (NaN if none)."""
    total, count = token_cross_entropy(logits, labels, ignore_index)
    return total / count


def span_loss(start_logits, end_logits, start_positions, end_positions):
    """The reference QA loss: positions clamped to [0, t], the position t ignored, mean of both ends."""
    t = start_logits.shape[-1]

    def one(logits, positions):
        positions = jnp.clip(positions.reshape(-1), 0, t)
        return mean_token_cross_entropy(logits, positions, ignore_index=t)

    return (one(start_logits, start_positions) + one(end_logits, end_positions)) / 2


def problem_type_of(problem_type: str | None, num_labels: int, labels_dtype) -> str:
    """`problem_type`, or (None) the one transformers infers from the number of labels and their dtype."""
    if problem_type is not None:
        return problem_type
    if num_labels == 1:
        return "regression"
    if jnp.issubdtype(labels_dtype, jnp.integer):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits, labels, problem_type: str | None, num_labels: int):
    """The reference sequence-classification loss; `problem_type` None is inferred as in transformers."""
    problem_type = problem_type_of(problem_type, num_labels, labels.dtype)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if problem_type == "regression":
        if num_labels == 1:
            return jnp.mean((logits.squeeze(-1) - labels.reshape(-1).astype(logits.dtype)) ** 2)
        return jnp.mean((logits - labels.astype(logits.dtype)) ** 2)
    if problem_type == "single_label_classification":
        return mean_token_cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)))
