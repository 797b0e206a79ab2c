"""transformers' logits processors and warpers, in its order (`logits_process.py`), on static shapes.

scores: [N, V] (N rows: batch x beams); seqs: [N, L] generated so far, valid up to cur_len.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .generation_config import GenerationConfig

NEG_INF = -float("inf")


def apply_processors(scores, seqs, cur_len, cfg: GenerationConfig, prompt_len: int = 1):
    """transformers' processors in its order. scores: [N, V]; seqs: [N, L] valid up to cur_len."""
    n, v = scores.shape
    L = seqs.shape[1]
    valid = jnp.arange(L)[None, :] < cur_len  # [1, L]
    rows = jnp.arange(n)[:, None]
    if cfg.repetition_penalty != 1.0:
        tokens = jnp.where(valid, seqs, v)  # [N, L]: positions past cur_len point past the vocabulary
        picked = jnp.take_along_axis(scores, jnp.minimum(tokens, v - 1), axis=1)
        picked = jnp.where(picked < 0, picked * cfg.repetition_penalty, picked / cfg.repetition_penalty)
        scores = scores.at[rows, tokens].set(picked, mode="drop")
    k = cfg.no_repeat_ngram_size
    if k and k > 0 and L >= k:
        starts = L - k + 1
        windows = jnp.stack([seqs[:, i:i + starts] for i in range(k)], axis=-1)  # [N, starts, k]
        prefix = jax.lax.dynamic_slice_in_dim(seqs, jnp.maximum(cur_len - (k - 1), 0), k - 1, axis=1)  # [N, k-1]
        match = jnp.all(windows[:, :, :k - 1] == prefix[:, None, :], axis=-1)  # [N, starts]
        match &= (jnp.arange(starts)[None, :] <= cur_len - k) & (cur_len + 1 >= k)
        banned = jnp.where(match, windows[:, :, k - 1], v)
        scores = scores.at[rows, banned].set(NEG_INF, mode="drop")
    eos = jnp.asarray(cfg.eos_ids, jnp.int32)
    if cfg.min_length > 0 and len(cfg.eos_ids):
        scores = jnp.where((cur_len < cfg.min_length) & jnp.isin(jnp.arange(v), eos)[None, :], NEG_INF, scores)
    if cfg.min_new_tokens and len(cfg.eos_ids):
        scores = jnp.where((cur_len - prompt_len < cfg.min_new_tokens) & jnp.isin(jnp.arange(v), eos)[None, :],
                           NEG_INF, scores)
    if cfg.forced_bos_token_id is not None:
        forced = jnp.where(jnp.arange(v) == cfg.forced_bos_token_id, 0.0, NEG_INF)[None, :]
        scores = jnp.where(cur_len == 1, forced, scores)
    if cfg.forced_eos_token_id is not None:
        ids = cfg.forced_eos_token_id if isinstance(cfg.forced_eos_token_id, tuple) else (cfg.forced_eos_token_id,)
        forced = jnp.where(jnp.isin(jnp.arange(v), jnp.asarray(ids)), 0.0, NEG_INF)[None, :]
        scores = jnp.where(cur_len == cfg.max_length - 1, forced, scores)
    return scores


def apply_warpers(scores, cfg: GenerationConfig, min_tokens_to_keep: int):
    """Temperature, top-k, top-p, as transformers' warpers."""
    v = scores.shape[-1]
    if cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k and cfg.top_k > 0:
        k = min(max(cfg.top_k, min_tokens_to_keep), v)
        kth = jax.lax.top_k(scores, k)[0][:, -1:]
        scores = jnp.where(scores < kth, NEG_INF, scores)
    if cfg.top_p < 1.0:
        order = jnp.argsort(scores, axis=-1)  # ascending
        sorted_scores = jnp.take_along_axis(scores, order, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(sorted_scores, axis=-1), axis=-1)
        remove_sorted = cum <= (1 - cfg.top_p)
        remove_sorted = remove_sorted.at[:, -min_tokens_to_keep:].set(False)
        remove = jnp.zeros_like(remove_sorted).at[jnp.arange(scores.shape[0])[:, None], order].set(remove_sorted)
        scores = jnp.where(remove, NEG_INF, scores)
    return scores
