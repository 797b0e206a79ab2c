"""The generation tests' oracle: transformers' `generate` on the same checkpoint and inputs, in float64
on both sides (near ties could flip an argmax between two correct float32 implementations).

The checkpoint is trained first, for a few hundred steps on a small task (copy the input after a
marker token, or emit noise after another; see task_batch), so that its outputs depend on the input,
vary in length, end with eos before the limit, and leave beam search real choices; a random model
emits eos at once or repeats one token, and a generation test would pass for the wrong reason. It is
trained once per test run and shared by the generation test modules: the first worker process to
need it trains and saves it, the others read it (conftest.built_once).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from led_flax import convert
from led_flax import model_for
from led_flax.decoding.generation import generate

from conftest import built_once, hf_config

VOCAB, PAD, BOS, EOS = 24, 1, 0, 2


def task_batch(rng, b, shortest=3, longest=9):
    lengths = rng.integers(shortest, longest + 1, b)
    n = int(lengths.max()) + 2
    ids = np.full((b, n), PAD, np.int64)
    am = np.zeros((b, n), np.int64)
    labels = np.full((b, longest + 2), -100, np.int64)
    for i, length in enumerate(lengths):
        body = rng.integers(5, VOCAB, length)
        ids[i, :length + 2] = [BOS, *body, EOS]
        am[i, :length + 2] = 1
        # A garden path: 60% of targets are marker 3 and random tokens, 40% marker 4 and the copy. Greedy
        # search takes the likelier first step into noise; beam search finds the sure copy behind 4.
        if rng.random() < 0.6:
            target = [3, *rng.integers(5, VOCAB, length), EOS]
        else:
            target = [4, *body, EOS]
        labels[i, :len(target)] = target
    return ids, am, labels


def _train(directory: str) -> None:
    """Trains the checkpoint (400 AdamW steps on task_batch) and saves it, with its final loss, in directory."""
    torch.manual_seed(0)
    config = hf_config(vocab_size=VOCAB, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                       encoder_attention_heads=4, decoder_attention_heads=4, attention_window=[4, 8],
                       max_encoder_position_embeddings=64, max_decoder_position_embeddings=32, dropout=0.0)
    model = transformers.LEDForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(400):
        ids, am, labels = task_batch(rng, 32)
        glob = np.zeros_like(ids)
        glob[:, 0] = 1
        loss = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                     global_attention_mask=torch.tensor(glob), labels=torch.tensor(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(directory)
    with open(os.path.join(directory, "final_loss.json"), "w") as f:
        json.dump(float(loss.detach()), f)


@functools.lru_cache(maxsize=1)
def trained_checkpoint(root: str | None = None):
    """(torch model, our config, our params, final training loss), trained once per test run: in ROOT
    (the `shared_dir` fixture), or a new temporary folder."""
    directory = built_once(root or tempfile.mkdtemp(prefix="led-flax-trained-"), "trained-generation-checkpoint",
                           _train)
    model = transformers.LEDForConditionalGeneration.from_pretrained(directory).eval()
    cfg, params = convert.from_hf(directory)
    with open(os.path.join(directory, "final_loss.json")) as f:
        return model, cfg, params, json.load(f)


def inputs(seed=1, b=8):
    ids, am, _ = task_batch(np.random.default_rng(seed), b)
    width = max(ids.shape[1], 11)
    ids = np.pad(ids, [(0, 0), (0, width - ids.shape[1])], constant_values=PAD)
    am = np.pad(am, [(0, 0), (0, width - am.shape[1])])
    ids[0], am[0] = 1, 0  # a repeated trigram, for no_repeat_ngram_size to ban
    ids[0, :11], am[0, :11] = [BOS, 7, 8, 9, 7, 8, 9, 7, 8, 9, EOS], 1
    ids[1], am[1] = 1, 0  # a short input, for min_length to extend
    ids[1, :5], am[1, :5] = [BOS, 12, 13, 14, EOS], 1
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    return ids, am, glob


def both(trained, **settings):
    """Generated ids from transformers (float64 model) and from us (float64 params, x64 enabled)."""
    ref, _, ours, _ = both_with_scores(trained, **settings)
    return ref, ours


def both_with_scores(trained, batch=None, **settings):
    """(reference ids, reference scores, our ids, our scores), float64 models on both sides.

    The scores are beam search's length-penalised sequence scores, or for greedy search the summed
    log-softmax of the processed scores at the chosen tokens, computed from transformers' per-step
    scores (each row's steps up to its eos)."""
    sequences, ref_scores = reference_with_scores(trained, batch, **settings)
    out = ours64(trained, batch, **settings)
    return sequences, ref_scores, np.asarray(out.sequences), np.asarray(out.scores)


def ours64(trained, batch=None, **kwargs):
    """Our `generate` with float64 params and x64 enabled (kwargs: settings, seeds, prng_key)."""
    _, cfg, params, _ = trained
    ids, am, glob = batch if batch is not None else inputs()
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        model = model_for(cfg, dtype=jnp.float64, param_dtype=jnp.float64)
        return generate(model, p64, ids, am, glob, **kwargs)


def reference_with_scores(trained, batch=None, **settings):
    """transformers' (ids, scores) in float64, greedy or beam search; scores as both_with_scores says."""
    ref_model = trained[0]
    ids, am, glob = batch if batch is not None else inputs()
    ref64 = ref_model.double()
    try:
        with torch.no_grad():
            ref = ref64.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                                 global_attention_mask=torch.tensor(glob), do_sample=False,
                                 return_dict_in_generate=True, output_scores=True, **settings)
    finally:
        ref_model.float()
    sequences = ref.sequences.numpy()
    if settings.get("num_beams", 1) > 1:
        ref_scores = ref.sequences_scores.numpy()
    else:
        ref_scores = np.zeros(len(sequences))
        done = np.zeros(len(sequences), bool)
        for t, step in enumerate(ref.scores):
            logp = torch.log_softmax(step, dim=-1).numpy()
            token = sequences[:, t + 1]
            ref_scores += np.where(done, 0.0, logp[np.arange(len(token)), token])
            done |= token == EOS
    return sequences, ref_scores


def assert_same(ref, ours, what):
    assert ref.shape == ours.shape, f"{what}: reference {ref.shape}, ours {ours.shape}\n{ref}\n{ours}"
    np.testing.assert_array_equal(ours, ref, err_msg=what)


def ends(seqs):
    """Per row: the index of the first eos after the start token, or None."""
    return [next((i for i in range(1, len(r)) if r[i] == EOS), None) for r in seqs]


def differs(a, b) -> bool:
    return a.shape != b.shape or not np.array_equal(a, b)
