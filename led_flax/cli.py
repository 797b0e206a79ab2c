"""The `led-flax` command: the composition root.

This is the one module that wires the model core (`led_flax`), `convert` and `train` together.
Nothing imports it, and `import led_flax` never loads it; every command is a call into the
libraries (`convert.convert_checkpoint`, `led_flax.summarize`, `train.loop.run`, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import textwrap
import time
import warnings

from tqdm import tqdm

import convert
from led_flax import pretrained
from led_flax.cache import CROSS_CACHES
from led_flax.config import HEAD_TO_ARCHITECTURE
from led_flax.pretrained import COMPUTE_DTYPES
from led_flax.quantize import DEFAULT_GROUP_SIZE, SCHEMES, QuantizeSpec
from led_flax.summarization import (DEFAULT_CACHE, InputWarning, SummarizeOptions, SummaryReport, format_summaries,
                                    summarize)

# the demo's generation settings; max_length is the tiny model's decoder positions
DEMO_GENERATION = {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 2.0, "max_length": 128}


def cmd_convert(args) -> int:
    spec = QuantizeSpec(args.quantize, args.group_size) if args.quantize else None
    with tqdm(desc="convert tensors", unit="tensor", disable=args.quiet) as bar:
        done = convert.convert_checkpoint(args.src, args.dst, head=args.head, dtype=args.dtype,
                                          overwrite=args.overwrite, progress=bar, quantize=spec)
    print(f"wrote {done.path} ({done.head}, {len(done.extra_files)} tokenizer/generation files)")
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(done.path, "params"))
                  for f in fs)
    print(f"params: {done.param_bytes / 1e6:.1f} MB in memory, {on_disk / 1e6:.1f} MB on disk"
          + (f"; quantized: {spec.describe()}" if spec else ""))
    return 0


def cmd_export(args) -> int:
    path = convert.export_checkpoint(args.src, args.dst, overwrite=args.overwrite, dequantize=args.dequantize)
    print(f"wrote {path} (loads with transformers' from_pretrained)")
    return 0


def _read_documents(args) -> tuple[list[str], list[str]]:
    """(names, texts) from files, a jsonl field, or stdin; unreadable files are skipped with a warning."""
    if args.jsonl:
        names, texts = [], []
        with open(args.jsonl, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"led-flax summarize: {args.jsonl} line {n} is not JSON ({e})")
                if args.field not in record:
                    raise SystemExit(f"led-flax summarize: {args.jsonl} line {n} has no field {args.field!r}; "
                                     f"name the text field with --field")
                names.append(f"{args.jsonl}:{n}")
                texts.append(str(record[args.field]))
        return names, texts
    if not args.files:
        return ["<stdin>"], [sys.stdin.read()]
    names, texts = [], []
    for path in args.files:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except UnicodeDecodeError as e:
            warnings.warn(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); skipped: convert it with "
                          f"iconv -t UTF-8", InputWarning)
            texts.append("")
        except OSError as e:
            raise SystemExit(f"led-flax summarize: cannot read {path}: {e.strerror}")
        names.append(path)
    return names, texts


def cmd_summarize(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    names, texts = _read_documents(args)
    generation = {k: v for k, v in dict(num_beams=args.num_beams, max_length=args.max_length,
                                         min_length=args.min_length, length_penalty=args.length_penalty,
                                         no_repeat_ngram_size=args.no_repeat_ngram_size).items() if v is not None}
    options = SummarizeOptions(batch_size=args.batch_size, truncate=not args.no_truncate, generation=generation,
                               output=args.out, output_format=args.format, progress_bar=not args.quiet,
                               compilation_cache=None if args.no_cache else args.cache_dir,
                               quantize=QuantizeSpec(args.quantize, args.group_size) if args.quantize else None,
                               compute_dtype=args.compute_dtype, cross_cache=args.cross_cache)
    report = SummaryReport()
    summaries = summarize(texts, convert.load(args.model), options, names=names, report=report)
    if not args.out:
        sys.stdout.write("".join(line + "\n" for line in format_summaries(summaries, names, args.format)))
    print(report.describe(), file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    """The offline main job on the embedded default: train `configs/tiny-aclsum.yaml` (a small LED from
    scratch on the ACLSum papers) on the CPU, summarize held-out papers with `led_flax.summarize`, and
    score them with ROUGE against the lead-3 baseline."""
    if args.convert:
        return cmd_demo_convert(args)
    from train import cli as train_cli
    from train import config as config_lib
    from train import data as data_lib
    from train import loop
    from train.evaluate import lead_sentences, rouge

    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-demo-")
    out = os.path.join(work, "tiny-aclsum")
    cfg = config_lib.load(train_cli.DEFAULT_CONFIG, [f"output_dir={out}"] + ([f"steps={args.steps}"] if args.steps else []))
    print(f"1. training configs/tiny-aclsum.yaml into {out} (a few minutes on a laptop CPU)", flush=True)
    train_cli.configure_xla()
    start = time.perf_counter()
    last = loop.run(cfg, progress=not args.quiet)
    losses = "".join(f", {name} {last[k]:.3f}" for k, name in (("loss", "training loss"), ("val_loss", "validation loss"))
                     if k in last)
    print(f"   trained to step {cfg.steps} in {time.perf_counter() - start:.0f} s{losses}", flush=True)

    papers = data_lib.load_examples(cfg.data, "test", limit=args.documents)
    final = os.path.join(out, "final")
    summaries_path = os.path.join(work, "summaries.jsonl")
    settings = ", ".join(f"{k}={v}" for k, v in DEMO_GENERATION.items())
    print(f"2. summarizing {len(papers)} held-out ACLSum test papers with {final} ({settings}) into "
          f"{summaries_path}", flush=True)
    options = SummarizeOptions(generation=DEMO_GENERATION, output=summaries_path, output_format="jsonl",
                               progress_bar=not args.quiet, compilation_cache=None)
    report = SummaryReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # papers are longer than the tiny model's 2,048 positions
        summaries = summarize([e.document for e in papers], pretrained.load(final), options,
                              names=[e.id for e in papers], report=report)
    print(f"   {report.describe()}")

    abstracts = [e.summary for e in papers]
    ours = rouge(summaries, abstracts)
    lead = rouge([lead_sentences(e.document) for e in papers], abstracts)
    print(f"3. ROUGE F1 on {len(papers)} held-out ACLSum test papers (reference: the abstract)")
    print(f"   {'':22s} {'ROUGE-1':>8s} {'ROUGE-2':>8s} {'ROUGE-L':>8s}")
    for name, r in (("tiny-aclsum (ours)", ours), ("lead-3 baseline", lead)):
        print(f"   {name:22s} {r['rouge1']:8.2f} {r['rouge2']:8.2f} {r['rougeL']:8.2f}")
    print(f"4. held-out paper {papers[0].id}")
    for label, text in (("our summary", summaries[0]), ("its abstract", abstracts[0])):
        print(textwrap.fill(" ".join(text.split()), width=100, initial_indent=f"   {label + ':':14s}",
                            subsequent_indent=" " * 17))
    print(f"   the model: {final} (led-flax), {os.path.join(out, 'hf')} (transformers); "
          f"metrics: {os.path.join(out, 'metrics.jsonl')}")
    return 0


def cmd_demo_convert(args) -> int:
    """Offline, on an embedded default: a small random LED written as an HF checkpoint, converted to
    led-flax, checked bit for bit, then a jitted encoder pass over a long input."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from convert.table import flatten
    from led_flax import LEDConfig, LEDForConditionalGeneration, checkpoint, init_params

    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-demo-")
    config = LEDConfig(vocab_size=1024, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, attention_window=256,
                       max_encoder_position_embeddings=8192, max_decoder_position_embeddings=256)
    params = init_params(LEDForConditionalGeneration(config), jax.random.PRNGKey(0))
    hf_dir, ours_dir = os.path.join(work, "hf"), os.path.join(work, "led-flax")
    convert.to_hf(config, params, hf_dir)
    print(f"1. wrote a random LED as an HF checkpoint: {hf_dir}")
    with tqdm(desc="convert tensors", unit="tensor", disable=args.quiet) as bar:
        done = convert.convert_checkpoint(hf_dir, ours_dir, overwrite=True, progress=bar)
    ckpt = checkpoint.load(done.path)
    a, b = flatten(jax.device_get(params)), flatten(ckpt.params)
    exact = sorted(a) == sorted(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    print(f"2. converted it to led-flax ({done.path}) and reloaded: {len(a)} tensors, bit-exact: {exact}")

    n = 8192
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (1, n))
    glob = np.zeros((1, n), np.int32)
    glob[0, 0] = 1
    model = LEDForConditionalGeneration(ckpt.config)
    encode = jax.jit(lambda p, i, g: model.apply({"params": p}, i, global_attention_mask=g, num_global_slots=1,
                                                 method="encode").last_hidden_state)
    t0 = time.perf_counter()
    out = encode(ckpt.params, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode(ckpt.params, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    print(f"3. encoded {n} tokens (window {config.attention_window[0]}, one global token): output "
          f"{tuple(out.shape)}, {first:.1f} s with compilation, {time.perf_counter() - t0:.2f} s warm")
    return 0 if exact and bool(jnp.isfinite(out).all()) else 1


def _train_cli():
    import train.cli  # the training package loads only when its command runs
    return train.cli


def _quantize_arguments(p, what: str) -> None:
    p.add_argument("--quantize", choices=list(SCHEMES), help=f"{what}: int8 per channel, int4 or nf4 in groups")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE,
                   help=f"inputs per scale for int4/nf4 (default {DEFAULT_GROUP_SIZE})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="led-flax", description="LED (Longformer-Encoder-Decoder) in JAX/Flax")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="an HF LED checkpoint directory (or hub id) -> a led-flax checkpoint")
    p.add_argument("src", help="HF checkpoint directory, or a hub id such as allenai/led-base-16384 (online only)")
    p.add_argument("dst", help="the led-flax checkpoint directory to write")
    p.add_argument("--head", choices=list(HEAD_TO_ARCHITECTURE), help="load into this head (default: the checkpoint's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="cast the stored params (default: keep; the compute dtype is summarize's --compute-dtype)")
    p.add_argument("--overwrite", action="store_true", help="replace DST once the new checkpoint is complete")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _quantize_arguments(p, "store the weights quantized")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("summarize", help="summarize documents with a led-flax or HF LED checkpoint")
    p.add_argument("--model", required=True, help="led-flax checkpoint or HF LED directory")
    p.add_argument("files", nargs="*", help="text files, one document each (default: stdin, one document)")
    p.add_argument("--jsonl", help="a jsonl file of documents instead of files")
    p.add_argument("--field", default="text", help="the text field of --jsonl records (default: text)")
    p.add_argument("--out", help="write here (atomically; resumable) instead of stdout")
    p.add_argument("--format", choices=["text", "jsonl"], default="text")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--min-length", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--no-repeat-ngram-size", type=int)
    p.add_argument("--no-truncate", action="store_true", help="an over-long document is an error, not cut")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help="JAX's persistent compilation cache")
    p.add_argument("--no-cache", action="store_true", help="do not use the compilation cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="log compilations and buckets")
    _quantize_arguments(p, "quantize a float checkpoint's weights at load")
    p.add_argument("--compute-dtype", choices=list(COMPUTE_DTYPES),
                   help="the dtype the model computes in (default float32; the stored weights stay as they are)")
    p.add_argument("--cross-cache", choices=list(CROSS_CACHES),
                   help="how generation caches the cross-attention keys and values (default float)")
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("demo", help="offline demo: train tiny-aclsum on the CPU, summarize held-out ACLSum "
                                    "papers, ROUGE against lead-3")
    p.add_argument("--workdir", help="where to write the run (default: a new temporary directory)")
    p.add_argument("--steps", type=int, help="training steps (default: the config's)")
    p.add_argument("--documents", type=int, default=16, help="held-out test papers to summarize (default 16)")
    p.add_argument("--convert", action="store_true",
                   help="instead: random LED -> HF checkpoint -> led-flax (bit-exact) -> 8,192-token encode")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="fine-tune or train LED from a YAML config (sharded, resumable)")
    _train_cli().add_arguments(p)
    p.set_defaults(func=lambda args: _train_cli().main(args))

    p = sub.add_parser("export", help="a led-flax checkpoint -> an HF directory that transformers loads")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--overwrite", action="store_true", help="replace DST once the new directory is complete")
    p.add_argument("--dequantize", action="store_true",
                   help="export a quantized checkpoint as float32 weights (its quantization error stays)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"led-flax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
