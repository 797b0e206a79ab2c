"""transformers' logits processors (`logits_process.py`), in the order of its `_get_logits_processor`,
with its arithmetic, on static shapes; the sampling warpers are in `warpers.py`.

scores: [N, V] float32, N = b x beams rows (the beams of an input are consecutive rows); seqs: [N, L]
the decoder tokens so far, valid up to cur_len ([] int32, traced); encoder_ids: [b, n] int32, the
encoder's input ids, padding included as transformers reads them. `cfg` says which processors are on
(static: one that is off adds nothing to the compiled loop); their numbers come from `values`, a
`settings.GenerationValues` of per-input arrays [b] (traced: a new value compiles nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from led_flax.model.config import id_tuple
from .generation_config import GenerationConfig
from .settings import GenerationValues, is_on
from .warpers import apply_warpers, per_row

NEG_INF = -float("inf")
PROMPT_LENGTH = 1  # the decoder prompt is the start token alone


def process(scores, seqs, cur_len, cfg: GenerationConfig, values: GenerationValues, encoder_ids,
            min_tokens_to_keep: int):
    """transformers' whole list: the processors, the warpers when sampling, then `renormalize_logits`'s
    log-softmax, which transformers always puts last. scores: [N, V] -> [N, V]."""
    scores = apply_processors(scores, seqs, cur_len, cfg, values, encoder_ids)
    if cfg.do_sample:
        scores = apply_warpers(scores, cfg, values, min_tokens_to_keep)
    if cfg.renormalize_logits:
        scores = jax.nn.log_softmax(scores, axis=-1)
    return scores


def apply_processors(scores, seqs, cur_len, cfg: GenerationConfig, values: GenerationValues, encoder_ids):
    """The processors (not the warpers), in transformers' order. scores: [N, V] -> [N, V]."""
    n, v = scores.shape
    if is_on(cfg, "encoder_repetition_penalty"):
        scores = _encoder_repetition_penalty(scores, encoder_ids, per_row(values.encoder_repetition_inverse, n))
    if is_on(cfg, "repetition_penalty"):
        scores = _repetition_penalty(scores, seqs, cur_len, per_row(values.repetition_penalty, n))
    if cfg.no_repeat_ngram_size > 0:
        scores = _no_repeat_ngram(scores, seqs, cur_len, cfg.no_repeat_ngram_size)
    if cfg.encoder_no_repeat_ngram_size > 0:
        scores = _encoder_no_repeat_ngram(scores, seqs, cur_len, cfg.encoder_no_repeat_ngram_size, encoder_ids)
    if cfg.bad_words_ids is not None:
        scores = _bad_words(scores, seqs, cur_len, cfg.bad_words_ids, cfg.eos_ids)
    if cfg.min_length > 0 and cfg.eos_ids:
        scores = jnp.where((cur_len < cfg.min_length) & _is_token(v, cfg.eos_ids), NEG_INF, scores)
    if cfg.min_new_tokens and cfg.eos_ids:
        scores = jnp.where((cur_len - PROMPT_LENGTH < cfg.min_new_tokens) & _is_token(v, cfg.eos_ids), NEG_INF,
                           scores)
    if cfg.forced_bos_token_id is not None:
        forced = jnp.where(_is_token(v, (cfg.forced_bos_token_id,)), 0.0, NEG_INF)
        scores = jnp.where(cur_len == 1, forced, scores)
    if cfg.forced_eos_token_id is not None:
        ids = id_tuple(cfg.forced_eos_token_id)
        scores = jnp.where(cur_len == cfg.max_length - 1, jnp.where(_is_token(v, ids), 0.0, NEG_INF), scores)
    if cfg.exponential_decay_length_penalty is not None and cfg.eos_ids:
        scores = _exponential_decay(scores, cur_len, cfg.exponential_decay_length_penalty[0], values.decay_gain,
                                    cfg.eos_ids)
    if cfg.suppress_tokens is not None:
        scores = jnp.where(_is_token(v, cfg.suppress_tokens), NEG_INF, scores)
    if cfg.begin_suppress_tokens is not None:
        # transformers starts one later when forced_bos_token_id fills the first position
        begin = PROMPT_LENGTH if PROMPT_LENGTH > 1 or cfg.forced_bos_token_id is None else PROMPT_LENGTH + 1
        scores = jnp.where((cur_len == begin) & _is_token(v, cfg.begin_suppress_tokens), NEG_INF, scores)
    return scores


def _is_token(v: int, ids) -> np.ndarray:
    """[1, V] bool: which vocabulary entries are among `ids` (a constant of the program)."""
    return np.isin(np.arange(v), np.asarray(ids, np.int64))[None, :]


def _rows_of_inputs(x, rows: int):
    """x: [b, ...] -> [rows, ...], each input's entry repeated for its rows // b beams."""
    return jnp.repeat(x, rows // x.shape[0], axis=0)


def _encoder_repetition_penalty(scores, encoder_ids, inverse):
    """EncoderRepetitionPenaltyLogitsProcessor: the input's tokens times 1/penalty where negative, over
    it where positive (so penalty > 1 favours them). inverse: [N, 1] 1/penalty, taken in float64 and
    rounded to float32, as there."""
    ids = _rows_of_inputs(encoder_ids, scores.shape[0])  # [N, n]
    picked = jnp.take_along_axis(scores, ids, axis=1)  # [N, n]
    picked = jnp.where(picked < 0, picked * inverse, picked / inverse)
    return scores.at[jnp.arange(scores.shape[0])[:, None], ids].set(picked)


def _repetition_penalty(scores, seqs, cur_len, penalty):
    """RepetitionPenaltyLogitsProcessor over the decoder tokens so far (the start token included).
    penalty: [N, 1]."""
    n, v = scores.shape
    valid = jnp.arange(seqs.shape[1])[None, :] < cur_len  # [1, L]
    tokens = jnp.where(valid, seqs, v)  # [N, L]: positions past cur_len point past the vocabulary
    picked = jnp.take_along_axis(scores, jnp.minimum(tokens, v - 1), axis=1)  # [N, L]
    picked = jnp.where(picked < 0, picked * penalty, picked / penalty)
    return scores.at[jnp.arange(n)[:, None], tokens].set(picked, mode="drop")


def _ngram_windows(ids, k: int):
    """ids: [r, m] -> [r, m - k + 1, k]: every k-gram, by start position."""
    starts = ids.shape[1] - k + 1
    return jnp.stack([ids[:, i:i + starts] for i in range(k)], axis=-1)


def _last_tokens(seqs, cur_len, k: int):
    """[N, L] -> [N, k]: the k tokens before cur_len (garbage while cur_len < k: callers mask it)."""
    return jax.lax.dynamic_slice_in_dim(seqs, jnp.maximum(cur_len - k, 0), k, axis=1)


def _no_repeat_ngram(scores, seqs, cur_len, k: int):
    """NoRepeatNGramLogitsProcessor: a token that would repeat a k-gram of the decoder tokens is -inf."""
    n, v = scores.shape
    L = seqs.shape[1]
    if L < k:
        return scores
    windows = _ngram_windows(seqs, k)  # [N, starts, k]
    match = jnp.all(windows[:, :, :k - 1] == _last_tokens(seqs, cur_len, k - 1)[:, None, :], axis=-1)  # [N, starts]
    match &= (jnp.arange(windows.shape[1])[None, :] <= cur_len - k) & (cur_len + 1 >= k)
    banned = jnp.where(match, windows[:, :, k - 1], v)
    return scores.at[jnp.arange(n)[:, None], banned].set(NEG_INF, mode="drop")


def _encoder_no_repeat_ngram(scores, seqs, cur_len, k: int, encoder_ids):
    """EncoderNoRepeatNGramLogitsProcessor: a token that would complete a k-gram of the encoder's input
    ids is -inf; the decoder's last k - 1 tokens (cur_len >= k - 1) are the prefix."""
    n, v = scores.shape
    b = encoder_ids.shape[0]
    if encoder_ids.shape[1] < k or seqs.shape[1] < k:  # no k-gram in the input, or no prefix ever long enough
        return scores
    windows = _ngram_windows(encoder_ids, k)[:, None]  # [b, 1, starts, k]
    prefix = _last_tokens(seqs, cur_len, k - 1).reshape(b, n // b, 1, k - 1)  # [b, beams, 1, k-1]
    match = jnp.all(windows[..., :k - 1] == prefix, axis=-1) & (cur_len >= k - 1)  # [b, beams, starts]
    banned = jnp.where(match, windows[..., k - 1], v).reshape(n, -1)  # [N, starts]
    return scores.at[jnp.arange(n)[:, None], banned].set(NEG_INF, mode="drop")


def _bad_words(scores, seqs, cur_len, bad_words, eos_ids):
    """NoBadWordsLogitsProcessor: the last token of a bad sequence is -inf when the decoder tokens end
    with the rest of it. A single eos is not a bad word (transformers drops it)."""
    n, v = scores.shape
    words = [w for w in bad_words if not (len(w) == 1 and w[0] in eos_ids)]
    singles = [w[0] for w in words if len(w) == 1]
    if singles:
        scores = jnp.where(_is_token(v, singles), NEG_INF, scores)
    by_prefix: dict[int, list[tuple[int, ...]]] = {}
    for w in words:
        if 1 < len(w) <= seqs.shape[1]:  # a longer prefix never fits before max_length
            by_prefix.setdefault(len(w) - 1, []).append(w)
    for p, group in sorted(by_prefix.items()):
        prefixes = jnp.asarray(np.array([w[:-1] for w in group]), jnp.int32)  # [G, p]
        last = jnp.asarray(np.array([w[-1] for w in group]), jnp.int32)  # [G]
        match = jnp.all(_last_tokens(seqs, cur_len, p)[:, None, :] == prefixes[None], axis=-1)  # [N, G]
        banned = jnp.where(match & (cur_len >= p), last[None, :], v)
        scores = scores.at[jnp.arange(n)[:, None], banned].set(NEG_INF, mode="drop")
    return scores


def _exponential_decay(scores, cur_len, start: int, gain_table, eos_ids):
    """ExponentialDecayLengthPenalty: past `start` generated tokens, eos gains |score| x (factor ** i - 1)
    at the i-th step after it. gain_table: [b, max_length + 1], each input's factor ** i - 1
    (`settings.GenerationValues.decay_gain`: float64, rounded to float32 as transformers' Python
    scalar is)."""
    regulation_start = start + PROMPT_LENGTH
    index = cur_len - regulation_start
    gain = jax.lax.dynamic_index_in_dim(gain_table, jnp.clip(index, 0, gain_table.shape[1] - 1), axis=1,
                                        keepdims=False)  # [b]
    gain = per_row(gain.astype(scores.dtype), scores.shape[0])  # [N, 1]
    penalty = jnp.where(jnp.isfinite(scores), jnp.abs(scores) * gain, 0.0)
    return jnp.where((index > 0) & _is_token(scores.shape[-1], eos_ids), scores + penalty, scores)
