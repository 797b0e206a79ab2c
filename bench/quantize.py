"""Accuracy of quantized weights and half-precision compute, with float32 as the oracle, on small
trained models (no real pretrained checkpoint can reach this machine):

  (a) the test suite's trained generation checkpoint (tests/generation_helpers.py's copy-or-noise
      task, trained here by the same code, 400 AdamW steps with transformers): the relative error of the logits
      (teacher forced, ||logits - logits_f32|| / ||logits_f32||), the share of positions whose argmax
      agrees, and the share of greedy generations identical to float32's, per scheme and compute dtype;
  (b) the demo's model (`led-flax demo --workdir DIR` trains it into DIR/tiny-aclsum/final): greedy
      summaries (max_length 128) of held-out ACLSum test papers, per variant the share identical to
      float32's, the mean length of the prefix that agrees (tokens), and ROUGE F1 minus float32's.

    python bench/quantize.py --demo /tmp/demo-q/tiny-aclsum/final [--documents 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMES = (None, "int8", "int4", "nf4")
DTYPES = ("float32", "bfloat16", "float16")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _spec(scheme):
    from led_flax.model.quantize import QuantizeSpec
    return None if scheme is None else QuantizeSpec(scheme)


def part_a(rows):
    from led_flax import model_for
    from led_flax.decoding.generation import generate
    from led_flax.model.inputs import shift_tokens_right
    from led_flax.model.quantize import quantize_params

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    flags = os.environ.get("XLA_FLAGS")
    from generation_helpers import task_batch, trained_checkpoint  # the test suite's checkpoint, step for step
    if flags is None:  # the tests' conftest sets its fast-compile flags: not for a benchmark
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = flags
    _, config, params, _ = trained_checkpoint()
    ids, am, labels = task_batch(np.random.default_rng(7), rows)
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    dec = shift_tokens_right(np.where(labels == -100, config.pad_token_id, labels), config.pad_token_id,
                             config.decoder_start_token_id)
    real = labels != -100
    results, oracle = [], None
    for scheme in SCHEMES:
        p = params if scheme is None else quantize_params(params, _spec(scheme))
        for dtype in DTYPES:
            model = model_for(config, dtype=jnp.dtype(dtype))
            logits = jax.jit(lambda p: model.apply({"params": p}, ids, am, dec, global_attention_mask=glob).logits)(p)
            logits = np.asarray(logits)[real]
            greedy = generate(model, p, ids, am, glob, max_length=12).sequences
            if oracle is None:
                oracle = (logits, greedy)
            same = np.mean([_strip(a, config.pad_token_id) == _strip(b, config.pad_token_id)
                            for a, b in zip(greedy.tolist(), oracle[1].tolist())])
            results.append((scheme or "float", dtype, _rel(logits, oracle[0]),
                            np.mean(logits.argmax(-1) == oracle[0].argmax(-1)), same))
    print(f"\n(a) trained task checkpoint (d_model 64, 2+2 layers, vocab 24), {rows} inputs, {int(real.sum())} "
          f"label positions; float32 weights and compute are the oracle")
    print("| weights | compute | logits rel. error | argmax agrees | greedy identical |")
    print("|---|---|---:|---:|---:|")
    for name, dtype, err, agree, same in results:
        print(f"| {name} | {dtype} | {100 * err:.3f}% | {100 * agree:.1f}% | {100 * same:.1f}% |")


def _generate_all(loaded, papers, batch: int, max_length: int):
    from led_flax.decoding.generation import generate
    tok, limit = loaded.tokenizer, loaded.config.max_encoder_position_embeddings
    encoded = tok.encode_batch([e.document for e in papers])
    out = []
    for k in range(0, len(papers), batch):
        rows = encoded[k:k + batch]
        enc = tok.pad(rows + [rows[0]] * (batch - len(rows)), max_length=limit, pad_to_multiple_of=limit)
        seqs = generate(loaded.module, loaded.params, enc["input_ids"], enc["attention_mask"],
                        enc["global_attention_mask"], num_global_slots=1, num_beams=1, max_length=max_length,
                        min_length=0).sequences
        out += [list(s) for s in seqs[:len(encoded[k:k + batch])]]
    return out


def _strip(seq, pad: int):
    return [t for t in seq[1:] if t != pad]


def part_b(demo: str, documents: int, batch: int):
    from led_flax.io import pretrained
    from led_flax.train import config as config_lib
    from led_flax.train import data as data_lib
    from led_flax.train.evaluate import rouge

    cfg = config_lib.load("tiny-aclsum", [])
    papers = data_lib.load_examples(cfg.data, "test", limit=documents)
    abstracts = [e.summary for e in papers]
    base = pretrained.load(demo)
    pad = base.tokenizer.pad_token_id
    variants = [("float32", None, None, None), ("bfloat16 compute", None, "bfloat16", None),
                ("float16 compute", None, "float16", None), ("int8", "int8", None, None),
                ("int8, int8 cross K/V", "int8", None, "int8"), ("int4 g64", "int4", None, None),
                ("nf4 g64", "nf4", None, None)]
    rows, oracle = [], None
    for name, scheme, dtype, cross in variants:
        loaded = base.quantized(_spec(scheme)).with_compute(dtype, cross)
        start = time.perf_counter()
        seqs = [_strip(s, pad) for s in _generate_all(loaded, papers, batch, 128)]
        seconds = time.perf_counter() - start
        texts = [t.strip() for t in loaded.tokenizer.batch_decode(seqs)]
        scores = rouge(texts, abstracts)
        if oracle is None:
            oracle = (seqs, scores)
        same = np.mean([a == b for a, b in zip(seqs, oracle[0])])
        prefix = np.mean([next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                          for a, b in zip(seqs, oracle[0])])
        rows.append((name, same, prefix, np.mean([len(s) for s in seqs]), scores, seconds,
                     len(set(map(tuple, seqs)))))
    print(f"\n(b) demo model {demo}: greedy summaries (max_length 128) of {len(papers)} held-out ACLSum test papers "
          f"(inputs cut to {base.config.max_encoder_position_embeddings} tokens); float32 is the oracle")
    print("| variant | identical to float32 | mean agreeing prefix (tokens) | mean length | ROUGE-1 | ROUGE-2 | ROUGE-L "
          "| distinct summaries | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ref = oracle[1]
    for name, same, prefix, length, scores, seconds, distinct in rows:
        diff = lambda k: f"{scores[k]:.2f}" if name == "float32" else f"{scores[k] - ref[k]:+.2f}"
        print(f"| {name} | {100 * same:.0f}% | {prefix:.1f} | {length:.1f} | {diff('rouge1')} | {diff('rouge2')} | "
              f"{diff('rougeL')} | {distinct} | {seconds:.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", help="the demo's led-flax checkpoint (DIR/tiny-aclsum/final); part (b) needs it")
    parser.add_argument("--documents", type=int, default=100, help="held-out test papers for part (b)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64, help="task inputs for part (a)")
    parser.add_argument("--skip-task", action="store_true", help="part (b) only")
    args = parser.parse_args()
    if not args.skip_task:
        part_a(args.rows)
    if args.demo:
        part_b(args.demo, args.documents, args.batch_size)


if __name__ == "__main__":
    main()
