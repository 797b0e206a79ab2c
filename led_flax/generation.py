"""Generation under one `jax.jit`: greedy, beam search and sampling with a static decoder cache.

The encoder runs once, the cross-attention keys and values are computed once (`init_cache`), and
the decoder steps one token at a time inside a `lax.while_loop` that stops when every sequence is
done. Greedy search and sampling follow transformers 5's `_sample`, beam search its `_beam_search`
(max(2, 1 + number of eos ids) x num_beams candidates per step, only the top num_beams may finish,
the length penalty counts generated tokens), and the logits processors its `logits_process.py`, in
the same order. `min_length` and `max_length` count the decoder start token, as there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .attention import count_global_slots
from .modeling import check_token_ids

NEG_INF = -float("inf")
# generation fields that old config.json files carry (transformers moved them to generation_config.json)
_OLD_CONFIG_FIELDS = ("max_length", "min_length", "num_beams", "length_penalty", "no_repeat_ngram_size",
                      "early_stopping", "repetition_penalty", "forced_bos_token_id", "forced_eos_token_id",
                      "do_sample", "temperature", "top_k", "top_p", "num_return_sequences")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """HF's generation settings (the subset LED uses), hashable so that it keys compiled programs."""

    max_length: int = 20
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    decoder_start_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        for f in ("eos_token_id", "forced_eos_token_id"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        if self.num_beams < 1 or self.num_return_sequences < 1:
            raise ValueError("GenerationConfig: num_beams and num_return_sequences must be >= 1")
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ValueError(f"GenerationConfig: num_return_sequences ({self.num_return_sequences}) cannot exceed "
                             f"num_beams ({self.num_beams}) without sampling; raise num_beams")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"GenerationConfig.early_stopping must be True, False or 'never', "
                             f"got {self.early_stopping!r}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("GenerationConfig.temperature must be > 0 when sampling; use do_sample=False for greedy")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"GenerationConfig.top_p must be in (0, 1], got {self.top_p}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def replace(self, **changes) -> "GenerationConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation settings {sorted(unknown)}; see led_flax.GenerationConfig")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, source=None, model_config=None) -> "GenerationConfig":
        """From a `generation_config.json` (a dict, the file, or a directory holding it), falling back to
        the old generation fields of `config.json`; special token ids default to the model config's."""
        data: dict[str, Any] = {}
        if model_config is not None:
            data.update({k: json.loads(v) for k, v in model_config.extra if k in _OLD_CONFIG_FIELDS})
            data.update(decoder_start_token_id=model_config.decoder_start_token_id,
                        bos_token_id=model_config.bos_token_id, pad_token_id=model_config.pad_token_id,
                        eos_token_id=model_config.eos_token_id)
        if isinstance(source, dict):
            data.update(source)
        elif source is not None:
            path = os.fspath(source)
            if os.path.isdir(path):
                path = os.path.join(path, "generation_config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    data.update(json.load(f))
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        # a null in the file means "unset": keep our default unless the default is itself None
        return cls(**{k: v for k, v in data.items() if k in defaults and (v is not None or defaults[k] is None)})

    def resolved(self, model_config) -> "GenerationConfig":
        """Fills the special tokens from the model config and turns max/min_new_tokens into lengths."""
        cfg = self
        fill = {}
        for f, v in (("decoder_start_token_id", model_config.decoder_start_token_id),
                     ("pad_token_id", model_config.pad_token_id), ("eos_token_id", model_config.eos_token_id),
                     ("bos_token_id", model_config.bos_token_id)):
            if getattr(cfg, f) is None:
                fill[f] = v
        cfg = cfg.replace(**fill) if fill else cfg
        if cfg.max_new_tokens is not None:  # the decoder prompt is the start token alone
            cfg = cfg.replace(max_length=cfg.max_new_tokens + 1, max_new_tokens=None)
        if cfg.max_length > model_config.max_decoder_position_embeddings:
            raise ValueError(f"max_length {cfg.max_length} exceeds the decoder's "
                             f"{model_config.max_decoder_position_embeddings} positions; lower max_length")
        return cfg


@struct.dataclass
class GenerateOutput:
    sequences: Any  # [b * num_return_sequences, length] int32, padded with pad_token_id
    scores: Any  # [b * num_return_sequences]: beam search's length-penalised score, else the summed log-prob


# ---------------------------------------------------------------------------------------------- processors
def _apply_processors(scores, seqs, cur_len, cfg: GenerationConfig, prompt_len: int = 1):
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


def _apply_warpers(scores, cfg: GenerationConfig, min_tokens_to_keep: int):
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


# ---------------------------------------------------------------------------------------------- loops
def _greedy_or_sample(step, cache, cfg: GenerationConfig, batch: int, rng):
    """transformers' `_sample`: processors on the raw logits, then argmax or a draw."""
    L = cfg.max_length
    seqs = jnp.full((batch, L), cfg.pad_token_id, jnp.int32).at[:, 0].set(cfg.decoder_start_token_id)
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)

    def cond(state):
        cur_len, _, unfinished, *_ = state
        return (cur_len < L) & jnp.any(unfinished)

    def body(state):
        cur_len, seqs, unfinished, scores_sum, cache, rng = state
        token = jax.lax.dynamic_slice_in_dim(seqs, cur_len - 1, 1, axis=1)  # [b, 1]
        logits, cache = step(token, cache)
        scores = _apply_processors(logits, seqs, cur_len, cfg)
        if cfg.do_sample:
            rng, draw = jax.random.split(rng)
            scores = _apply_warpers(scores, cfg, 1)
            nxt = jax.random.categorical(draw, scores, axis=-1).astype(jnp.int32)
        else:
            nxt = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(scores, axis=-1), nxt[:, None], axis=1)[:, 0]
        scores_sum = scores_sum + jnp.where(unfinished, logp, 0.0)
        nxt = jnp.where(unfinished, nxt, cfg.pad_token_id)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, nxt[:, None], cur_len, axis=1)
        unfinished = unfinished & ~jnp.isin(nxt, eos)
        return cur_len + 1, seqs, unfinished, scores_sum, cache, rng

    state = (jnp.int32(1), seqs, jnp.ones((batch,), bool), jnp.zeros((batch,), jnp.float32), cache, rng)
    cur_len, seqs, _, scores_sum, _, _ = jax.lax.while_loop(cond, body, state)
    return seqs, scores_sum, cur_len


def _beam_search(step, cache, cfg: GenerationConfig, batch: int, rng):
    """transformers 5's `_beam_search`, with static shapes. The cache is batch * num_beams wide."""
    L, nb = cfg.max_length, cfg.num_beams
    n_eos = len(cfg.eos_ids)
    keep = max(2, 1 + n_eos) * nb
    prompt_len = 1
    top_mask = jnp.arange(keep) < nb  # only the top num_beams candidates may finish
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
    big = jnp.float32(-1.0e9)
    lp = cfg.length_penalty

    running = jnp.full((batch, nb, L), cfg.pad_token_id, jnp.int32).at[:, :, 0].set(cfg.decoder_start_token_id)
    state = dict(
        cur_len=jnp.int32(prompt_len),
        running=running,
        running_scores=jnp.zeros((batch, nb), jnp.float32).at[:, 1:].set(big),
        seqs=running,
        scores=jnp.full((batch, nb), big, jnp.float32),
        lens=jnp.full((batch, nb), prompt_len, jnp.int32),
        finished=jnp.zeros((batch, nb), bool),
        heuristic=jnp.ones((batch, 1), bool),
        cache=cache,
        rng=rng,
        go=jnp.bool_(True),
    )

    def gather(x, idx):  # x: [b, beams, ...], idx: [b, k] -> [b, k, ...]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def cond(s):
        return s["go"] & (s["cur_len"] < L)

    def body(s):
        cur_len = s["cur_len"]
        flat = s["running"].reshape(batch * nb, L)
        token = jax.lax.dynamic_slice_in_dim(flat, cur_len - 1, 1, axis=1)
        logits, cache = step(token, s["cache"])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        log_probs = _apply_processors(log_probs, flat, cur_len, cfg, prompt_len)
        v = log_probs.shape[-1]
        acc = (log_probs.reshape(batch, nb, v) + s["running_scores"][:, :, None]).reshape(batch, nb * v)
        rng = s["rng"]
        if cfg.do_sample:
            rng, draw = jax.random.split(rng)
            acc_w = _apply_warpers(acc, cfg, n_eos + 1)
            gumbel = -jnp.log(-jnp.log(jax.random.uniform(draw, acc_w.shape, minval=1e-20, maxval=1.0)))
            _, idx = jax.lax.top_k(acc_w + gumbel, keep)  # sampling without replacement
            top_lp = jnp.take_along_axis(acc, idx, axis=1)
            order = jnp.argsort(-top_lp, axis=1)
            top_lp, idx = jnp.take_along_axis(top_lp, order, 1), jnp.take_along_axis(idx, order, 1)
        else:
            top_lp, idx = jax.lax.top_k(acc, keep)  # [b, keep]
        src_beam, tok = idx // v, (idx % v).astype(jnp.int32)
        cand = gather(s["running"], src_beam)  # [b, keep, L]
        cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None], cur_len, axis=2)
        hits = jnp.isin(tok, eos) | (cur_len + 1 >= L)  # [b, keep]

        # the best num_beams candidates that did not finish continue
        run_lp = top_lp + hits.astype(jnp.float32) * big
        nxt = jax.lax.top_k(run_lp, nb)[1]  # [b, nb]
        running = gather(cand, nxt)
        running_scores = gather(run_lp, nxt)
        beam_origin = gather(src_beam, nxt)  # which old beam each new running beam extends
        flat_origin = (beam_origin + jnp.arange(batch)[:, None] * nb).reshape(-1)
        # only the self-attention keys/values follow their beams: cross-attention ones are equal across
        # the beams of one input
        cache = dict(cache, layers=tuple(
            dict(layer, self_k=jnp.take(layer["self_k"], flat_origin, axis=0),
                 self_v=jnp.take(layer["self_v"], flat_origin, axis=0)) for layer in cache["layers"]))

        # candidates that finished among the top num_beams join the finished pool, length-penalised
        did_finish = hits & top_mask[None, :]
        fin_lp = top_lp / ((cur_len + 1 - prompt_len).astype(jnp.float32) ** lp)
        full = jnp.all(s["finished"], axis=-1, keepdims=True) & (cfg.early_stopping is True)
        fin_lp = fin_lp + full.astype(jnp.float32) * big
        fin_lp = fin_lp + (~s["heuristic"]).astype(jnp.float32) * big
        fin_lp = fin_lp + (~did_finish).astype(jnp.float32) * big
        merged_scores = jnp.concatenate([s["scores"], fin_lp], axis=1)
        best = jax.lax.top_k(merged_scores, nb)[1]
        seqs = gather(jnp.concatenate([s["seqs"], cand], axis=1), best)
        scores = gather(merged_scores, best)
        lens = gather(jnp.concatenate([s["lens"], jnp.full((batch, keep), cur_len + 1, jnp.int32)], axis=1), best)
        finished = gather(jnp.concatenate([s["finished"], did_finish], axis=1), best)

        cur_len = cur_len + 1
        if cfg.early_stopping == "never" and lp > 0.0:
            best_len = jnp.float32(L - prompt_len)
        else:
            best_len = (cur_len - prompt_len).astype(jnp.float32)
        best_running = running_scores[:, :1] / (best_len ** lp)
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), -1.0e9)
        heuristic = s["heuristic"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        go = jnp.any(heuristic) & ~(jnp.all(finished) & (cfg.early_stopping is True)) & ~jnp.all(hits)
        return dict(cur_len=cur_len, running=running, running_scores=running_scores,
                    seqs=seqs, scores=scores, lens=lens, finished=finished, heuristic=heuristic, cache=cache,
                    rng=rng, go=go)

    s = jax.lax.while_loop(cond, body, state)
    r = cfg.num_return_sequences
    seqs = s["seqs"][:, :r].reshape(batch * r, L)
    scores = s["scores"][:, :r].reshape(batch * r)
    length = jnp.max(s["lens"][:, :r])
    return seqs, scores, length


# ---------------------------------------------------------------------------------------------- entry point
_COMPILED: dict = {}


def _program(model, cfg: GenerationConfig, slots: int, shape: tuple):
    """One jitted program per model, settings, global slots and input shape (so `_COMPILED` counts
    the compilations)."""
    key = (id(model), model.config, model.dtype, cfg, slots, shape)
    if key in _COMPILED:
        return _COMPILED[key]

    def run(params, input_ids, attention_mask, global_attention_mask, rng):
        variables = {"params": params}
        enc = model.apply(variables, input_ids, attention_mask, global_attention_mask, num_global_slots=slots,
                          method="encode").last_hidden_state
        batch = input_ids.shape[0]
        # the beams of an input share its encoder output and cross-attention keys and values
        cache = model.apply(variables, enc, cfg.max_length, cfg.num_beams, method="init_cache")

        def step(token, cache):
            out = model.apply(variables, token, enc, attention_mask, cache=cache, method="decode")
            return out.logits[:, -1].astype(jnp.float32), out.cache

        if cfg.num_beams > 1:
            return _beam_search(step, cache, cfg, batch, rng)
        if cfg.num_return_sequences > 1:
            raise ValueError("num_return_sequences > 1 needs num_beams > 1 (sampling several per input: repeat "
                             "the inputs)")
        return _greedy_or_sample(step, cache, cfg, batch, rng)

    fn = jax.jit(run)
    _COMPILED[key] = fn
    return fn


def generate(model, params, input_ids, attention_mask=None, global_attention_mask=None,
             generation_config: GenerationConfig | None = None, prng_key=None, num_global_slots=None,
             sharding=None, **overrides) -> GenerateOutput:
    """Generates summaries (or any decoder output) for a batch, in one compiled program per
    (batch shape, settings).

    input_ids: [b, n]; attention_mask: [b, n] (default all ones); global_attention_mask: [b, n]
    (default: the first token, as LED's summarization checkpoints expect). sharding: where to put
    the batch (a NamedSharding over the batch axis spreads it over devices). Returns the sequences
    (decoder start token first, padded with pad_token_id, trimmed to the longest) and their scores.
    """
    config = model.config
    cfg = (generation_config or GenerationConfig()).replace(**overrides).resolved(config)
    input_ids = np.asarray(input_ids)
    check_token_ids(input_ids, config.vocab_size, "input_ids")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    if global_attention_mask is None:
        global_attention_mask = np.zeros_like(input_ids)
        global_attention_mask[:, 0] = 1
    slots = count_global_slots(global_attention_mask, attention_mask, num_global_slots)
    if cfg.do_sample and prng_key is None:
        raise ValueError("sampling needs a PRNG key: pass prng_key=jax.random.PRNGKey(seed)")
    rng = prng_key if prng_key is not None else jax.random.PRNGKey(0)
    fn = _program(model, cfg, slots, input_ids.shape)
    arrays = [jnp.asarray(x, jnp.int32) for x in (input_ids, attention_mask, global_attention_mask)]
    if sharding is not None:
        arrays = [jax.device_put(x, sharding) for x in arrays]
    seqs, scores, length = fn(params, *arrays, rng)
    length = int(length)
    return GenerateOutput(sequences=np.asarray(seqs)[:, :length], scores=np.asarray(scores))
