"""The decoding loops, each a `lax.while_loop` over a named state: greedy search and sampling
(transformers 5's `_sample`) and beam search (its `_beam_search`: max(2, 1 + number of eos ids) x
num_beams candidates per step, only the top num_beams may finish, the length penalty counts generated
tokens). The masking arithmetic is transformers': -1e9 is added once per reason.

`step(token [N, 1], cache) -> (logits [N, V] float32, cache)` runs the decoder one position; the
cache is a `cache.DecoderCache`, which the loops only carry and `reorder`. encoder_ids: [b, n] int32,
the encoder's input ids, for the processors that read them. `cfg` is static (the program's key),
`values` the traced numbers per input (`settings.GenerationValues`). keys: [b] PRNG keys, one per
input: each input's draws come from its own key, split once per step, so a row samples the same
whatever else shares its batch and wherever it sits.
Shapes: b batch, nb beams, k candidates, L max_length, V vocabulary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from .generation_config import GenerationConfig
from .processors import PROMPT_LENGTH, process
from .settings import GenerationValues

BIG_NEGATIVE = -1.0e9  # transformers' penalty for a candidate that may not be chosen


class SearchResult(NamedTuple):
    sequences: Any  # [b * num_return_sequences, L] int32, padded with pad_token_id
    scores: Any  # [b * num_return_sequences] float32
    length: Any  # [] int32: the longest sequence's length


class GreedyState(NamedTuple):
    cur_len: Any  # [] int32: tokens in every sequence so far
    sequences: Any  # [b, L] int32
    unfinished: Any  # [b] bool
    log_prob_sum: Any  # [b] float32
    cache: Any  # DecoderCache
    keys: Any  # [b] PRNG keys


def _split_keys(keys):
    """[b] keys -> ([b] keys to carry, [b] keys to draw with)."""
    both = jax.vmap(jax.random.split)(keys)  # [b, 2]
    return both[:, 0], both[:, 1]


def greedy_or_sample(step, cache, cfg: GenerationConfig, values: GenerationValues, batch: int, keys,
                     encoder_ids) -> SearchResult:
    """transformers' `_sample`: processors (and warpers, when sampling) on the raw logits, then argmax
    or a draw."""
    L = cfg.max_length
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)

    def cond(s: GreedyState):
        return (s.cur_len < L) & jnp.any(s.unfinished)

    def body(s: GreedyState) -> GreedyState:
        token = jax.lax.dynamic_slice_in_dim(s.sequences, s.cur_len - 1, 1, axis=1)  # [b, 1]
        logits, cache = step(token, s.cache)
        scores = process(logits, s.sequences, s.cur_len, cfg, values, encoder_ids, min_tokens_to_keep=1)
        keys = s.keys
        if cfg.do_sample:
            keys, draws = _split_keys(keys)
            nxt = jax.vmap(jax.random.categorical)(draws, scores).astype(jnp.int32)  # [b]: a draw per row
        else:
            nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), nxt[:, None], axis=1)[:, 0]  # [b]
        nxt = jnp.where(s.unfinished, nxt, cfg.pad_token_id)
        return GreedyState(cur_len=s.cur_len + 1,
                           sequences=jax.lax.dynamic_update_slice_in_dim(s.sequences, nxt[:, None], s.cur_len, axis=1),
                           unfinished=s.unfinished & ~jnp.isin(nxt, eos),
                           log_prob_sum=s.log_prob_sum + jnp.where(s.unfinished, logp, 0.0), cache=cache, keys=keys)

    sequences = jnp.full((batch, L), cfg.pad_token_id, jnp.int32).at[:, 0].set(cfg.decoder_start_token_id)
    init = GreedyState(cur_len=jnp.int32(PROMPT_LENGTH), sequences=sequences, unfinished=jnp.ones((batch,), bool),
                       log_prob_sum=jnp.zeros((batch,), jnp.float32), cache=cache, keys=keys)
    s = jax.lax.while_loop(cond, body, init)
    return SearchResult(sequences=s.sequences, scores=s.log_prob_sum, length=s.cur_len)


class BeamState(NamedTuple):
    cur_len: Any  # [] int32
    running: Any  # [b, nb, L] int32: the live beams
    running_scores: Any  # [b, nb] float32: their summed log-probs
    sequences: Any  # [b, nb, L] int32: the finished pool, best first
    scores: Any  # [b, nb] float32: the pool's length-penalised scores
    lengths: Any  # [b, nb] int32
    finished: Any  # [b, nb] bool: pool slots that hold a finished beam
    improvable: Any  # [b, 1] bool: a running beam can still beat the worst finished one
    cache: Any  # DecoderCache, b * nb rows
    keys: Any  # [b] PRNG keys
    go: Any  # [] bool: keep looping


def _gather(x, idx):
    """x: [b, beams, ...], idx: [b, k] -> [b, k, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step, cache, cfg: GenerationConfig, values: GenerationValues, batch: int, keys,
                encoder_ids) -> SearchResult:
    """transformers 5's `_beam_search`, with static shapes. The cache is batch * num_beams wide. With
    sampling, the processors and warpers act on each beam's log-probs, and `keep` candidates are drawn
    without replacement from the softmax of the accumulated (warped) scores, as there. Each input has
    its own length_penalty (values.length_penalty [b])."""
    L, nb = cfg.max_length, cfg.num_beams
    n_eos = len(cfg.eos_ids)
    keep = max(2, 1 + n_eos) * nb
    keep_per_row = n_eos + 1 if n_eos else 2  # the warpers' min_tokens_to_keep with beams, as transformers'
    top_mask = jnp.arange(keep) < nb  # only the top num_beams candidates may finish
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
    big = jnp.float32(BIG_NEGATIVE)
    lp = values.length_penalty[:, None]  # [b, 1]

    def cond(s: BeamState):
        return s.go & (s.cur_len < L)

    def body(s: BeamState) -> BeamState:
        cur_len = s.cur_len
        flat = s.running.reshape(batch * nb, L)
        token = jax.lax.dynamic_slice_in_dim(flat, cur_len - 1, 1, axis=1)  # [b * nb, 1]
        logits, cache = step(token, s.cache)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        log_probs = process(log_probs, flat, cur_len, cfg, values, encoder_ids, min_tokens_to_keep=keep_per_row)
        v = log_probs.shape[-1]
        acc = (log_probs.reshape(batch, nb, v) + s.running_scores[:, :, None]).reshape(batch, nb * v)
        keys = s.keys
        if cfg.do_sample:
            keys, draws = _split_keys(keys)
            uniform = jax.vmap(lambda k: jax.random.uniform(k, acc.shape[1:], minval=1e-20, maxval=1.0))(draws)
            gumbel = -jnp.log(-jnp.log(uniform))  # [b, nb * v]: each input's own draw
            _, idx = jax.lax.top_k(acc + gumbel, keep)  # sampling without replacement
            top_lp = jnp.take_along_axis(acc, idx, axis=1)
            order = jnp.argsort(-top_lp, axis=1)
            top_lp, idx = jnp.take_along_axis(top_lp, order, 1), jnp.take_along_axis(idx, order, 1)
        else:
            top_lp, idx = jax.lax.top_k(acc, keep)  # [b, k]
        src_beam, tok = idx // v, (idx % v).astype(jnp.int32)
        cand = _gather(s.running, src_beam)  # [b, k, L]
        cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None], cur_len, axis=2)
        hits = jnp.isin(tok, eos) | (cur_len + 1 >= L)  # [b, k]

        # the best num_beams candidates that did not finish continue
        run_lp = top_lp + hits.astype(jnp.float32) * big
        nxt = jax.lax.top_k(run_lp, nb)[1]  # [b, nb]
        running = _gather(cand, nxt)
        running_scores = _gather(run_lp, nxt)
        beam_origin = _gather(src_beam, nxt)  # which old beam each new running beam extends
        cache = cache.reorder((beam_origin + jnp.arange(batch)[:, None] * nb).reshape(-1))

        # candidates that finished among the top num_beams join the finished pool, length-penalised
        did_finish = hits & top_mask[None, :]
        fin_lp = top_lp / ((cur_len + 1 - PROMPT_LENGTH).astype(jnp.float32) ** lp)
        full = jnp.all(s.finished, axis=-1, keepdims=True) & (cfg.early_stopping is True)
        fin_lp = fin_lp + full.astype(jnp.float32) * big
        fin_lp = fin_lp + (~s.improvable).astype(jnp.float32) * big
        fin_lp = fin_lp + (~did_finish).astype(jnp.float32) * big
        merged_scores = jnp.concatenate([s.scores, fin_lp], axis=1)
        best = jax.lax.top_k(merged_scores, nb)[1]
        sequences = _gather(jnp.concatenate([s.sequences, cand], axis=1), best)
        scores = _gather(merged_scores, best)
        lengths = _gather(jnp.concatenate([s.lengths, jnp.full((batch, keep), cur_len + 1, jnp.int32)], axis=1), best)
        finished = _gather(jnp.concatenate([s.finished, did_finish], axis=1), best)

        cur_len = cur_len + 1
        best_len = (cur_len - PROMPT_LENGTH).astype(jnp.float32)  # [b, 1] below
        if cfg.early_stopping == "never":  # transformers' branch on length_penalty > 0, per input
            best_len = jnp.where(lp > 0.0, jnp.float32(L - PROMPT_LENGTH), best_len)
        best_running = running_scores[:, :1] / (best_len ** lp)
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -1.0e9)
        improvable = s.improvable & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        go = jnp.any(improvable) & ~(jnp.all(finished) & (cfg.early_stopping is True)) & ~jnp.all(hits)
        return BeamState(cur_len=cur_len, running=running, running_scores=running_scores, sequences=sequences,
                         scores=scores, lengths=lengths, finished=finished, improvable=improvable, cache=cache,
                         keys=keys, go=go)

    running = jnp.full((batch, nb, L), cfg.pad_token_id, jnp.int32).at[:, :, 0].set(cfg.decoder_start_token_id)
    init = BeamState(cur_len=jnp.int32(PROMPT_LENGTH), running=running,
                     running_scores=jnp.zeros((batch, nb), jnp.float32).at[:, 1:].set(big), sequences=running,
                     scores=jnp.full((batch, nb), big, jnp.float32),
                     lengths=jnp.full((batch, nb), PROMPT_LENGTH, jnp.int32), finished=jnp.zeros((batch, nb), bool),
                     improvable=jnp.ones((batch, 1), bool), cache=cache, keys=keys, go=jnp.bool_(True))
    s = jax.lax.while_loop(cond, body, init)
    r = cfg.num_return_sequences
    return SearchResult(sequences=s.sequences[:, :r].reshape(batch * r, L),
                        scores=s.scores[:, :r].reshape(batch * r), length=jnp.max(s.lengths[:, :r]))
