"""The `led-flax` command: the composition root.

This is the one module that wires the model core (`led_flax`), `convert` and `train` together.
Nothing imports it, and `import led_flax` never loads it; every command is a call into the
libraries (`convert.convert_checkpoint`, `led_flax.summarize`, `train.loop.run`, ...).

Every command speaks one way (README, "Command line"): options are checked before any work,
messages read `led-flax COMMAND: error: ...` (or `warning:`) on one line that names the fix, and the
exit status is 0 on success, 2 for a usage, input or environment error (a bad option, an unreadable
or malformed file, an output that cannot be written, a full or read-only disk), 1 for an internal
failure (a bug: the traceback is printed), 3 when training stops on a NaN, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import sys
import tempfile
import textwrap
import time
import traceback
import warnings

from tqdm import tqdm

import convert
from convert.loader import check_source
from led_flax.files import WriteError, describe_json, jsonl_objects
from led_flax import checkpoint, pretrained
from led_flax.cache import CROSS_CACHES
from led_flax.config import HEAD_TO_ARCHITECTURE
from led_flax.summarization import (DEFAULT_CACHE, InputWarning, SummarizeOptions, SummaryReport, check_output,
                                    describe_generation, format_summaries, generation_settings, summarize)

from led_flax.pretrained import COMPUTE_DTYPES
from led_flax.quantize import DEFAULT_GROUP_SIZE, SCHEMES, QuantizeSpec

PROG = "led-flax"
# exit statuses (README, "Command line")
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# the demo's generation settings; max_length is the tiny model's decoder positions
DEMO_GENERATION = {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 2.0, "max_length": 128}


class UsageError(ValueError):
    """A command line or an input file the user must fix; the message names it and the fix."""


# ---------------------------------------------------------------------------------------------- options
def at_least(low: int):
    """An argparse type: a whole number >= `low`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


class _ParseError(Exception):
    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`led-flax CMD: error: ... (see led-flax CMD --help)`)
    returned by `main` as exit status 2, not a usage block and a SystemExit."""

    def error(self, message):
        raise _ParseError(self.prog, f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------- convert, export
def quantize_spec(args) -> QuantizeSpec | None:
    """--quantize and --group-size as a QuantizeSpec (None without --quantize). Raises UsageError for a
    group size without a scheme that has groups (int4, nf4)."""
    if args.group_size is not None and args.quantize not in ("int4", "nf4"):
        raise UsageError(f"--group-size applies to --quantize int4 or nf4 (int8 has one scale per output channel); "
                         f"{'drop it' if args.quantize else 'add --quantize int4 or nf4'}")
    if not args.quantize:
        return None
    return QuantizeSpec(args.quantize, args.group_size or DEFAULT_GROUP_SIZE)


def cmd_convert(args) -> int:
    spec = quantize_spec(args)
    # the bar's total is set once the checkpoint's tensors are counted
    with tqdm(desc="convert tensors", unit="tensor", disable=args.quiet) as bar:
        done = convert.convert_checkpoint(args.src, args.dst, head=args.head, dtype=args.dtype,
                                          overwrite=args.overwrite, progress=bar,
                                          max_encoder_positions=args.max_encoder_positions, quantize=spec)
    print(f"wrote {done.path} ({done.head}, {len(done.extra_files)} tokenizer/generation files)")
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(done.path, checkpoint.PARAMS))
                  for f in fs)
    print(f"params: {done.param_bytes / 1e6:.1f} MB in memory, {on_disk / 1e6:.1f} MB on disk"
          + (f"; quantized: {spec.describe()}" if spec else ""))
    return 0


def cmd_export(args) -> int:
    path = convert.export_checkpoint(args.src, args.dst, overwrite=args.overwrite, dequantize=args.dequantize)
    print(f"wrote {path} (loads with transformers' from_pretrained)")
    return 0


# ---------------------------------------------------------------------------------------------- summarize
@dataclasses.dataclass(frozen=True)
class Documents:
    """What `summarize` reads: each document's name (for messages and the jsonl output) and text."""

    names: list[str]
    texts: list[str]


def _decode(data: bytes, source: str, fix: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError(f"{source} line {line} is not UTF-8 ({e.reason} at byte {e.start} of the file); {fix}") from None


def read_jsonl(path: str, field: str) -> Documents:
    """One document per line of a jsonl file: the string `field` of each JSON object; the name is
    the record's own `id` when it has one (a string or a number), else PATH:LINE.
    Raises UsageError naming the file, the line and the fix."""
    names, texts = [], []
    for n, record in jsonl_objects(path, UsageError, f'{{"{field}": "..."}}'):
        if field not in record:
            raise UsageError(f"{path} line {n} has no field {field!r} (it has {sorted(record)[:8]}); name the text "
                             f"field with --field")
        if not isinstance(record[field], str):
            raise UsageError(f"{path} line {n}: field {field!r} is {describe_json(record[field])}, not a string; "
                             f"name the text field with --field, or fix the line")
        rid = record.get("id")
        names.append(str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else f"{path}:{n}")
        texts.append(record[field])
    return Documents(names, texts)


def read_files(paths) -> Documents:
    """One document per text file; a file that is not UTF-8 is skipped (an empty document) with an
    InputWarning. Raises UsageError for a file that is missing or cannot be read."""
    names, texts = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None
        try:
            texts.append(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            warnings.warn(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); skipped: convert it with "
                          f"iconv -t UTF-8", InputWarning)
            texts.append("")
        names.append(path)
    return Documents(names, texts)


def read_stdin(prefix: str) -> Documents:
    """One document from stdin; on a terminal, says first what it waits for."""
    if sys.stdin is None:
        raise UsageError("no documents: pass FILES or --jsonl FILE")
    if sys.stdin.isatty():
        print(f"{prefix}: reading one document from the terminal; end it with Ctrl-D (or pass FILES or "
              f"--jsonl FILE)", file=sys.stderr)
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    return Documents(["<stdin>"], [_decode(data, "<stdin>", "pipe UTF-8 text (iconv -t UTF-8)")])


def cmd_summarize(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    prefix = f"{PROG} summarize"
    if args.min_length is not None and args.max_length is not None and args.min_length > args.max_length:
        raise UsageError(f"--min-length {args.min_length} exceeds --max-length {args.max_length}; lower one of them")
    if args.jsonl and args.files:
        raise UsageError("give FILES or --jsonl FILE, not both")
    if args.restart and not args.out:
        raise UsageError("--restart discards the progress of an --out run; it needs --out")
    inputs = [args.jsonl] if args.jsonl else args.files
    if args.out and any(os.path.abspath(args.out) == os.path.abspath(p) for p in inputs):
        raise UsageError(f"--out {args.out} is also an input: it would be overwritten; write the summaries elsewhere")
    generation = {k: v for k, v in dict(num_beams=args.num_beams, max_length=args.max_length,
                                         min_length=args.min_length, length_penalty=args.length_penalty,
                                         no_repeat_ngram_size=args.no_repeat_ngram_size).items() if v is not None}
    options = SummarizeOptions(batch_size=args.batch_size, truncate=not args.no_truncate, generation=generation,
                               output=args.out, output_format=args.format, progress_bar=not args.quiet,
                               compilation_cache=None if args.no_cache else args.cache_dir, restart=args.restart,
                               sequence_devices=args.sequence_devices,
                               quantize=quantize_spec(args),
                               compute_dtype=args.compute_dtype, cross_cache=args.cross_cache)
    check_output(options)  # before anything is read or loaded
    check_source(args.model)
    docs = read_jsonl(args.jsonl, args.field) if args.jsonl else read_files(args.files) if args.files else \
        read_stdin(prefix)
    model = convert.load(args.model)
    model.require_head("conditional_generation", "summarization")
    print(f"{prefix}: generation: {describe_generation(generation_settings(model, generation), model, generation)}",
          file=sys.stderr)
    report = SummaryReport()
    summaries = summarize(docs.texts, model, options, names=docs.names, report=report)
    if not args.out:
        sys.stdout.write("".join(line + "\n" for line in format_summaries(summaries, docs.names, args.format)))
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

    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir} is a file; name a folder")
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

    from led_flax.trees import flatten
    from led_flax import LEDConfig, LEDForConditionalGeneration, checkpoint, init_params

    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir} is a file; name a folder")
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
    p.add_argument("--group-size", type=at_least(1), metavar="N",
                   help=f"inputs per scale for int4/nf4 (default {DEFAULT_GROUP_SIZE})")


GENERATION_HELP = "(default: the checkpoint's generation_config.json, else transformers' default: {})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="LED (Longformer-Encoder-Decoder) in JAX/Flax",
                    epilog="exit status: 0 done, 2 usage, input or environment error, 1 internal failure, "
                           "3 training stopped on a NaN, 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("convert", help="an HF LED checkpoint directory (or hub id) -> a led-flax checkpoint",
                       description="Convert an HF LED checkpoint (directory or hub id) into a led-flax checkpoint "
                                   "directory; the tokenizer and generation files travel along.")
    p.add_argument("src", help="HF checkpoint directory, or a hub id such as allenai/led-base-16384 (online only)")
    p.add_argument("dst", help="the led-flax checkpoint directory to write")
    p.add_argument("--head", choices=list(HEAD_TO_ARCHITECTURE), help="load into this head (default: the checkpoint's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="cast the stored params (default: keep; the compute dtype is summarize's --compute-dtype)")
    p.add_argument("--max-encoder-positions", type=int, metavar="N",
                   help="extend the encoder's position table to N rows by tiling it, for inputs longer than the "
                        "checkpoint's (N: larger than the table, a multiple of the largest attention window)")
    p.add_argument("--overwrite", action="store_true", help="replace DST once the new checkpoint is complete")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _quantize_arguments(p, "store the weights quantized")
    p.set_defaults(func=cmd_convert, interrupted=lambda a: f"nothing was written ({a.dst} is as it was)")

    p = sub.add_parser("summarize", help="summarize documents with a led-flax or HF LED checkpoint",
                       description="Summarize documents (files, the --field of each --jsonl record, or stdin) "
                                   "with a led-flax checkpoint, an HF LED directory or a hub id. The generation "
                                   "settings in use are printed first.")
    p.add_argument("--model", required=True, help="led-flax checkpoint, HF LED directory, or hub id (online only)")
    p.add_argument("files", nargs="*", help="text files, one document each (default: stdin, one document)")
    p.add_argument("--jsonl", help="a jsonl file of documents instead of files, one JSON object a line")
    p.add_argument("--field", default="text", help="the text field of --jsonl records (default: text); a record's "
                                                     "own 'id' names it in the output")
    p.add_argument("--out", help="write here (atomically; resumable: rerun the same command) instead of stdout")
    p.add_argument("--restart", action="store_true",
                   help="with --out: discard the progress of an earlier run of OUT and start afresh")
    p.add_argument("--format", choices=["text", "jsonl"], default="text",
                   help="text: one summary a line; jsonl: {\"source\": name, \"summary\": ...} a line (default: text)")
    p.add_argument("--batch-size", type=at_least(1), default=4, metavar="N",
                   help="documents per batch, rounded up to a multiple of the devices (default: 4)")
    p.add_argument("--sequence-devices", type=at_least(1), default=1, metavar="N",
                   help="split each document's tokens over N of the local devices, for documents longer than one "
                        "device holds; N divides the device count, and inputs pad to whole attention blocks on "
                        "every device (default: 1)")
    p.add_argument("--num-beams", type=at_least(1), metavar="N",
                   help="beam search with N beams; 1 is greedy " + GENERATION_HELP.format(1))
    p.add_argument("--max-length", type=at_least(2), metavar="N",
                   help="most tokens a summary has, the decoder start token included " + GENERATION_HELP.format(20))
    p.add_argument("--min-length", type=at_least(0), metavar="N",
                   help="fewest tokens a summary has, the decoder start token included " + GENERATION_HELP.format(0))
    p.add_argument("--length-penalty", type=finite, metavar="X",
                   help="beam search: scores are divided by length**X; above 0 favours longer summaries "
                        + GENERATION_HELP.format(1.0))
    p.add_argument("--no-repeat-ngram-size", type=at_least(0), metavar="N",
                   help="never repeat an n-gram of N tokens; 0 allows any " + GENERATION_HELP.format(0))
    p.add_argument("--no-truncate", action="store_true",
                   help="a document longer than the encoder's positions is an error, not cut to them")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"JAX's persistent compilation cache (default: "
                                                                f"{DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="do not use the compilation cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="log compilations, cache reads and buckets")
    _quantize_arguments(p, "quantize a float checkpoint's weights at load")
    p.add_argument("--compute-dtype", choices=list(COMPUTE_DTYPES),
                   help="the dtype the model computes in (default float32; the stored weights stay as they are)")
    p.add_argument("--cross-cache", choices=list(CROSS_CACHES),
                   help="how generation caches the cross-attention keys and values (default float)")
    p.set_defaults(func=cmd_summarize, interrupted=lambda a: (
        f"rerun the same command to resume (finished batches are kept in {a.out}.progress.jsonl)" if a.out else
        "nothing was saved; pass --out FILE to make a run resumable"))

    p = sub.add_parser("demo", help="offline demo: train tiny-aclsum on the CPU, summarize held-out ACLSum "
                                    "papers, ROUGE against lead-3",
                       description="The offline main job: train configs/tiny-aclsum.yaml on the CPU, summarize "
                                   "held-out ACLSum papers, and score them with ROUGE against lead-3.")
    p.add_argument("--workdir", help="where to write the run (default: a new temporary directory)")
    p.add_argument("--steps", type=at_least(1), metavar="N", help="training steps (default: the config's, 400)")
    p.add_argument("--documents", type=at_least(1), default=16, metavar="N",
                   help="held-out test papers to summarize (default: 16)")
    p.add_argument("--convert", action="store_true",
                   help="instead: random LED -> HF checkpoint -> led-flax (bit-exact) -> 8,192-token encode")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo, interrupted=lambda a: "rerun it to start again")

    p = sub.add_parser("train", help="fine-tune or train LED from a YAML config (sharded, resumable)",
                       description="Train or fine-tune LED from a YAML config; rerunning the same command resumes "
                                   "from the run's latest checkpoint.")
    _train_cli().add_arguments(p)
    p.set_defaults(func=lambda args: _train_cli().main(args), interrupted=lambda a: (
        "rerun the same command to resume from the run's last checkpoint"))

    p = sub.add_parser("export", help="a led-flax checkpoint -> an HF directory that transformers loads",
                       description="Export a led-flax checkpoint as an HF directory (config.json, "
                                   "model.safetensors, the tokenizer and generation files) that transformers' "
                                   "from_pretrained loads.")
    p.add_argument("src", help="the led-flax checkpoint directory")
    p.add_argument("dst", help="the HF directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DST once the new directory is complete")
    p.add_argument("--dequantize", action="store_true",
                   help="export a quantized checkpoint as float32 weights (its quantization error stays)")
    p.set_defaults(func=cmd_export, interrupted=lambda a: f"nothing was written ({a.dst} is as it was)")
    return parser


@contextlib.contextmanager
def _one_line_warnings(prefix: str):
    """Warnings print as `PREFIX: warning: MESSAGE`, one line each, without file and source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {message}", file=file or sys.stderr)
    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _error_message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, WriteError) and e.strerror and e.filename and \
            str(e).startswith("[Errno"):
        return f"{e.filename}: {e.strerror}"
    return str(e)


def main(argv=None) -> int:
    """Runs one command; returns its exit status (see the module docstring)."""
    try:
        args = build_parser().parse_args(argv)
    except _ParseError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else EXIT_OK
    prefix = f"{PROG} {args.command}"
    with _one_line_warnings(prefix):
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted; {args.interrupted(args)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:
            code = getattr(e, "exit_code", None)  # training's NaN stop is 3
            if code is None and not isinstance(e, (ValueError, OSError, ImportError)):
                traceback.print_exc()
                print(f"{prefix}: internal error: {type(e).__name__}: {e} (a bug in led-flax: please report it "
                      f"with the traceback above)", file=sys.stderr)
                return EXIT_INTERNAL
            print(f"{prefix}: error: {_error_message(e)}", file=sys.stderr)
            return code if code is not None else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
