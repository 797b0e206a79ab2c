"""The `led-flax` command (application layer: it may import `convert` and `train`)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

def _resolve_source(src: str) -> str:
    import convert
    from led_flax.checkpoint import CheckpointError
    try:
        return convert.resolve_source(src)
    except (CheckpointError, convert.HubError) as e:
        raise SystemExit(f"led-flax: {e}") from None


def cmd_convert(args) -> int:
    import numpy as np
    from tqdm import tqdm

    import convert
    from led_flax import checkpoint

    src = _resolve_source(args.src)
    if os.path.exists(args.dst) and not args.overwrite:
        raise FileExistsError(f"{args.dst} already exists; pass --overwrite to replace it")
    if not checkpoint.is_hf_checkpoint(src):
        raise SystemExit(f"led-flax: {src} is not an HF LED checkpoint (needs config.json and "
                         f"model.safetensors, a safetensors index, or pytorch_model.bin)")
    dtype = {"float32": np.float32, "bfloat16": "bfloat16", None: None}[args.dtype]
    if dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    with tqdm(desc="convert tensors", unit="tensor", disable=args.quiet) as bar:
        config, params = convert.from_hf(src, head=args.head, dtype=dtype, progress=bar)
    extra = [os.path.join(src, f) for f in checkpoint.TOKENIZER_FILES + (checkpoint.GENERATION_CONFIG,)
             if os.path.isfile(os.path.join(src, f))]
    out = checkpoint.save(args.dst, config, params, extra_files=extra, overwrite=args.overwrite)
    print(f"wrote {out} ({checkpoint.head_of(params)}, {len(extra)} tokenizer/generation files)")
    return 0


def cmd_export(args) -> int:
    import convert
    from led_flax import checkpoint

    ckpt = checkpoint.load(args.src)
    convert.to_hf(ckpt.config, ckpt.params, args.dst)
    for f in checkpoint.TOKENIZER_FILES + (checkpoint.GENERATION_CONFIG,):
        if os.path.isfile(os.path.join(args.src, f)):
            shutil.copy2(os.path.join(args.src, f), os.path.join(args.dst, f))
    print(f"wrote {args.dst} (loads with transformers' from_pretrained)")
    return 0


def cmd_demo(args) -> int:
    """The offline main job on the embedded default: train `configs/tiny-aclsum.yaml` (a small LED from
    scratch on the ACLSum papers) on the CPU, summarize held-out papers with `led-flax summarize`, and
    score them with ROUGE against the lead-3 baseline."""
    if args.convert:
        return cmd_demo_convert(args)
    import json
    import tempfile

    from train import cli as train_cli
    from train import config as config_lib
    from train import data as data_lib
    from train.evaluate import lead_sentences, rouge

    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-demo-")
    out = os.path.join(work, "tiny-aclsum")
    overrides = [f"output_dir={out}"] + (["steps=%d" % args.steps] if args.steps else [])
    print(f"1. training configs/tiny-aclsum.yaml into {out} (a few minutes on a laptop CPU)", flush=True)
    status = main(["train", "--config", train_cli.DEFAULT_CONFIG] + sum((["--set", o] for o in overrides), []) +
                  (["--quiet"] if args.quiet else []))
    if status:
        return status
    cfg = config_lib.load(train_cli.DEFAULT_CONFIG, overrides)
    papers = data_lib.load_examples(cfg.data, "test", limit=args.documents)
    docs = os.path.join(work, "test-papers.jsonl")
    with open(docs, "w", encoding="utf-8") as f:
        for e in papers:
            f.write(json.dumps({"id": e.id, "text": e.document}, ensure_ascii=False) + "\n")
    summaries_path = os.path.join(work, "summaries.jsonl")
    final = os.path.join(out, "final")
    print(f"2. led-flax summarize --model {final} --jsonl {docs} --out {summaries_path} --format jsonl", flush=True)
    import warnings

    from led_flax.summarization import InputWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # papers are longer than the tiny model's 2,048 positions
        status = main(["summarize", "--model", final, "--jsonl", docs, "--out", summaries_path, "--format", "jsonl",
                       "--no-cache"] + (["--quiet"] if args.quiet else []))
    if status:
        return status
    with open(summaries_path, encoding="utf-8") as f:
        summaries = [json.loads(line)["summary"] for line in f]
    ours = rouge(summaries, [e.summary for e in papers])
    lead = rouge([lead_sentences(e.document) for e in papers], [e.summary for e in papers])
    print(f"3. ROUGE F1 on {len(papers)} held-out ACLSum test papers (reference: the abstract)")
    print(f"   {'':22s} {'ROUGE-1':>8s} {'ROUGE-2':>8s} {'ROUGE-L':>8s}")
    for name, r in (("tiny-aclsum (ours)", ours), ("lead-3 baseline", lead)):
        print(f"   {name:22s} {r['rouge1']:8.2f} {r['rouge2']:8.2f} {r['rougeL']:8.2f}")
    print(f"   first summary: {summaries[0][:300]!r}")
    print(f"   the model: {final} (led-flax), {os.path.join(out, 'hf')} (transformers); "
          f"metrics: {os.path.join(out, 'metrics.jsonl')}")
    return 0


def cmd_demo_convert(args) -> int:
    """Offline, on an embedded default: a small random LED written as an HF checkpoint, converted to
    led-flax, checked bit for bit, then a jitted encoder pass over a long input."""
    import tempfile
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import convert
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
    status = cmd_convert(argparse.Namespace(src=hf_dir, dst=ours_dir, head=None, dtype=None, overwrite=True,
                                            quiet=args.quiet))
    ckpt = checkpoint.load(ours_dir)
    loaded_config, loaded = ckpt.config, ckpt.params
    a, b = flatten(jax.device_get(params)), flatten(loaded)
    exact = sorted(a) == sorted(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    print(f"2. converted back and reloaded: {len(a)} tensors, bit-exact: {exact}")

    n = 8192
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (1, n))
    glob = np.zeros((1, n), np.int32)
    glob[0, 0] = 1
    model = LEDForConditionalGeneration(loaded_config)
    encode = jax.jit(lambda p, i, g: model.apply({"params": p}, i, global_attention_mask=g, num_global_slots=1,
                                                 method="encode").last_hidden_state)
    t0 = time.perf_counter()
    out = encode(loaded, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode(loaded, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    print(f"3. encoded {n} tokens (window {config.attention_window[0]}, one global token): output "
          f"{tuple(out.shape)}, {first:.1f} s with compilation, {time.perf_counter() - t0:.2f} s warm")
    return 0 if status == 0 and exact and bool(jnp.isfinite(out).all()) else 1


def _read_documents(args) -> tuple[list[str], list[str]]:
    """(names, texts) from files, a jsonl field, or stdin; unreadable files are skipped with a warning."""
    import json
    import warnings

    from led_flax.summarization import InputWarning
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
    import logging

    import convert
    from led_flax.summarization import SummarizeOptions, SummaryReport, format_summaries, summarize

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    names, texts = _read_documents(args)
    generation = {k: v for k, v in dict(num_beams=args.num_beams, max_length=args.max_length,
                                         min_length=args.min_length, length_penalty=args.length_penalty,
                                         no_repeat_ngram_size=args.no_repeat_ngram_size).items() if v is not None}
    options = SummarizeOptions(batch_size=args.batch_size, truncate=not args.no_truncate, generation=generation,
                               output=args.out, output_format=args.format, progress_bar=not args.quiet,
                               compilation_cache=None if args.no_cache else args.cache_dir)
    report = SummaryReport()
    summaries = summarize(texts, convert.load(_resolve_source(args.model)), options, names=names, report=report)
    if not args.out:
        sys.stdout.write("".join(line + "\n" for line in format_summaries(summaries, names, args.format)))
    print(report.describe(), file=sys.stderr)
    return 0


def _train_cli():
    import train.cli  # the training package loads only when its command runs
    return train.cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="led-flax", description="LED (Longformer-Encoder-Decoder) in JAX/Flax")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="an HF LED checkpoint directory (or hub id) -> a led-flax checkpoint")
    p.add_argument("src", help="HF checkpoint directory, or a hub id such as allenai/led-base-16384 (online only)")
    p.add_argument("dst", help="the led-flax checkpoint directory to write")
    p.add_argument("--head", choices=["base", "conditional_generation", "sequence_classification",
                                      "question_answering"], help="load into this head (default: the checkpoint's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="cast the params (default: keep)")
    p.add_argument("--overwrite", action="store_true", help="replace DST once the new checkpoint is complete")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)

    from led_flax.summarization import DEFAULT_CACHE
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
