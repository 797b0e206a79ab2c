"""The `led-flax` command: the composition root.

This is the one package that wires the core (`led_flax.model`, `decoding`, `io`, ...) and the
applications (`led_flax.summarization`, `led_flax.convert`, `led_flax.train`) together. Nothing
imports it, and `import led_flax` never loads it; every command is a call into the libraries
(`convert.convert_checkpoint`, `led_flax.summarize`, `led_flax.train.loop.run`, ...). The training
package loads only when `train` or `demo` runs.

Every command speaks one way (README, "Command line"): options are checked before any work,
messages read `led-flax COMMAND: error: ...` (or `warning:`) on one line that names the fix, and the
exit status is 0 on success, 2 for a usage, input or environment error (a bad option, an unreadable
or malformed file, an output that cannot be written, a full or read-only disk), 1 for an internal
failure (a bug: the traceback is printed), 3 when training stops on a NaN, 130 when interrupted
(SIGINT), 143 when terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import traceback
import warnings

from tqdm import tqdm

from led_flax import convert
from led_flax.convert.loader import check_source
from led_flax.io import checkpoint
from led_flax.io.pretrained import COMPUTE_DTYPES
from led_flax.model.cache import CROSS_CACHES
from led_flax.model.config import ATTENTION_IMPLEMENTATIONS, HEAD_TO_ARCHITECTURE
from led_flax.model.quantize import DEFAULT_GROUP_SIZE, SCHEMES, QuantizeSpec
from led_flax.parallel.distributed import job_options
from led_flax.summarization import (DEFAULT_CACHE, InputWarning, SummarizeOptions, SummaryReport, check_output,
                                    describe_generation, format_summaries, generation_settings, summarize)
from led_flax.utils.files import WriteError

from .demo import DEMO_CONFIG, cmd_demo
from . import supervisor
from .documents import read_files, read_jsonl, read_stdin
from .usage import Terminated, UsageError, at_least, finite

PROG = "led-flax"
# exit statuses (README, "Command line")
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def _raise_terminated(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated for the block (the previous handler is put back after; off the main
    thread, where no handler can be set, nothing changes)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def cmd_summarize(args) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    prefix = f"{PROG} summarize"
    if args.min_length is not None and args.max_length is not None and args.min_length > args.max_length:
        raise UsageError(f"--min-length {args.min_length} exceeds --max-length {args.max_length}; lower one of them")
    if args.jsonl and args.files:
        raise UsageError("give FILES or --jsonl FILE, not both")
    if args.restart and not args.out:
        raise UsageError("--restart discards the progress of an --out run; it needs --out")
    job = job_options(args)
    job.check()
    if job.multi_process and not (args.jsonl or args.files):
        raise UsageError("a job of several processes reads its documents from FILES or --jsonl FILE, which every "
                         "process reads alike, not from stdin")
    if job.multi_process and not args.out:
        raise UsageError("a job of several processes writes its summaries with --out FILE, on a folder every "
                         "process sees")
    if job.multi_process and not supervisor.is_child():  # the JAX work in a child, so that an abort is one line
        return supervisor.supervise(args.argv, prefix, job.process_id, then=(
            f"the finished batches are kept in the progress files ({args.out}.progress.jsonl and its siblings): "
            f"rerun the same command, with any number of processes, to resume"))
    inputs = [args.jsonl] if args.jsonl else args.files
    if args.out and any(os.path.realpath(args.out) == os.path.realpath(p) for p in inputs):
        raise UsageError(f"--out {args.out} is also an input: it would be overwritten; write the summaries elsewhere")
    generation = {k: v for k, v in dict(num_beams=args.num_beams, max_length=args.max_length,
                                         min_length=args.min_length, length_penalty=args.length_penalty,
                                         no_repeat_ngram_size=args.no_repeat_ngram_size).items() if v is not None}
    options = SummarizeOptions(batch_size=args.batch_size, truncate=not args.no_truncate, generation=generation,
                               output=args.out, output_format=args.format, progress_bar=not args.quiet,
                               compilation_cache=None if args.no_cache else args.cache_dir, restart=args.restart,
                               sequence_devices=args.sequence_devices,
                               quantize=quantize_spec(args),
                               compute_dtype=args.compute_dtype, cross_cache=args.cross_cache,
                               attention_implementation=args.attention_implementation)
    check_output(options)  # before anything is read or loaded
    check_source(args.model)
    docs = read_jsonl(args.jsonl, args.field) if args.jsonl else read_files(args.files) if args.files else \
        read_stdin(prefix)
    job.initialize()  # before any device use
    if job.multi_process:  # jax.distributed's preemption notifier takes SIGTERM over: take it back
        signal.signal(signal.SIGTERM, _raise_terminated)
    model = convert.load(args.model)
    model.require_head("conditional_generation", "summarization")
    settings = generation_settings(model, generation)  # resolved once: summarize and generate take them as they are
    print(f"{prefix}: generation: {describe_generation(settings, model, generation)}", file=sys.stderr)
    options = dataclasses.replace(options, generation=settings)
    report = SummaryReport()
    with warnings.catch_warnings():
        for name in docs.skipped:  # reported once, as unreadable, not again as empty
            warnings.filterwarnings("ignore", message=f"{re.escape(name)} is empty", category=InputWarning)
        summaries = summarize(docs.texts, model, options, names=docs.names, report=report)
    if not args.out:
        sys.stdout.write("".join(line + "\n" for line in format_summaries(summaries, docs.names, args.format)))
    if not args.verbose:  # with --verbose, summarize has logged the same line
        print(report.describe(), file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    prefix = f"{PROG} serve"
    try:  # the serve extra: only this command needs the HTTP stack
        from led_flax.serving import ServeOptions, Server
    except ImportError as e:
        raise ImportError(f"the server needs the serve extra ({e.name} is missing): pip install "
                          f"'led-flax[serve]'") from None
    api_key = None
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                api_key = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read --api-key-file {args.api_key_file}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        if not api_key:
            raise UsageError(f"--api-key-file {args.api_key_file} is empty; write the key in it")
    buckets = None
    if args.buckets:
        try:
            buckets = tuple(int(b) for b in args.buckets.split(","))
        except ValueError:
            raise UsageError(f"--buckets {args.buckets!r}: give token counts separated by commas, e.g. "
                             f"1024,4096") from None
    try:
        options = ServeOptions(host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                               max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_body_mb=args.max_body_mb,
                               timeout_s=args.timeout_s, drain_timeout_s=args.drain_timeout_s, api_key=api_key,
                               buckets=buckets, max_programs=args.max_programs, max_num_beams=args.max_num_beams,
                               compilation_cache=None if args.no_cache else args.cache_dir,
                               quantize=quantize_spec(args), compute_dtype=args.compute_dtype,
                               cross_cache=args.cross_cache, attention_implementation=args.attention_implementation)
    except ValueError as e:  # named as the option, not the field: max_wait_ms -> --max-wait-ms
        raise UsageError(re.sub(r"^([a-z_]+)", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None
    check_source(args.model)
    model = convert.load(args.model)
    server = Server(model, options, announce=lambda line: print(f"{prefix}: {line}", file=sys.stderr, flush=True))
    server.run()
    if server.forced_by is not None:  # a second signal: stopped at once, not drained
        raise Terminated() if server.forced_by == signal.SIGTERM else KeyboardInterrupt()
    print(f"{prefix}: stopped", file=sys.stderr)
    return 0


def _run_train(args) -> int:
    from led_flax.train import cli as train_cli  # the training package loads only when its command runs
    return train_cli.main(args)


def _train_arguments(p) -> None:
    p.add_argument("--config", default=DEMO_CONFIG,
                   help=f"a YAML config file, or the name of a shipped one: tiny-aclsum, led-base-16384, "
                        f"led-large-16384 (default: {DEMO_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optimizer.learning_rate=1e-4 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the mesh and the sharded train state abstractly (eval_shape): shapes, "
                        "shardings and bytes per device, no data, no weights")
    p.add_argument("--compile", action="store_true",
                   help="with --dry-run: also compile the train step for this backend and print XLA's memory "
                        "analysis per device (minutes for a large model; no data, no weights)")
    _distributed_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _distributed_arguments(p, timeouts: bool = False) -> None:
    """The options that make this process one of a job's (train and summarize share them)."""
    p.add_argument("--coordinator", help="multi-process: the coordinator's host:port (jax.distributed)")
    p.add_argument("--num-processes", type=int, metavar="N", help="multi-process: the number of processes (with "
                                                                    "--coordinator)")
    p.add_argument("--process-id", type=int, metavar="I", help="multi-process: this process's index, 0 to N-1 (with "
                                                                "--coordinator)")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with no arguments (TPU pods, SLURM: auto-detected)")
    if timeouts:
        p.add_argument("--initialization-timeout-s", type=at_least(1), metavar="S", default=300,
                       help="multi-process: how long to wait for every process to join (default: 300)")
        p.add_argument("--heartbeat-timeout-s", type=at_least(1), metavar="S", default=100,
                       help="multi-process: how long a silent process may stay silent before the job stops "
                            "(default: 100)")


def _quantize_arguments(p, what: str) -> None:
    p.add_argument("--quantize", choices=list(SCHEMES), help=f"{what}: int8 per channel, int4 or nf4 in groups")
    p.add_argument("--group-size", type=at_least(1), metavar="N",
                   help=f"inputs per scale for int4/nf4 (default {DEFAULT_GROUP_SIZE})")


def _inference_arguments(p) -> None:
    """The compilation cache and how the model is prepared: summarize's and serve's options."""
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"JAX's persistent compilation cache (default: "
                                                                f"{DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="do not use the compilation cache")
    _quantize_arguments(p, "quantize a float checkpoint's weights at load")
    p.add_argument("--compute-dtype", choices=list(COMPUTE_DTYPES),
                   help="the dtype the model computes in (default float32; the stored weights stay as they are)")
    p.add_argument("--cross-cache", choices=list(CROSS_CACHES),
                   help="how generation caches the cross-attention keys and values (default float)")
    p.add_argument("--attention-implementation", choices=list(ATTENTION_IMPLEMENTATIONS),
                   help="the encoder's local attention: xla (default), splash (the Pallas kernel, for TPU; "
                        "interpret mode elsewhere, slow) or auto (splash on a TPU, else xla)")


GENERATION_HELP = "(default: the checkpoint's generation_config.json, else transformers' default: {})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="LED (Longformer-Encoder-Decoder) in JAX/Flax",
                    epilog="exit status: 0 done, 2 usage, input or environment error, 1 internal failure, "
                           "3 training stopped on a NaN, 130 interrupted, 143 terminated (SIGTERM)")
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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="log compilations, cache reads and buckets")
    _inference_arguments(p)
    _distributed_arguments(p, timeouts=True)
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
    _train_arguments(p)
    p.set_defaults(func=_run_train, interrupted=lambda a: (
        "rerun the same command to resume from the run's last checkpoint"))

    p = sub.add_parser("serve", help="a summarization endpoint over HTTP, with dynamic batching",
                       description="Serve POST /summarize ({\"inputs\": ..., \"parameters\": {...}}), GET /health "
                                   "and GET /metrics for a led-flax or HF LED checkpoint. Requests are batched by "
                                   "length bucket and settings; SIGTERM or SIGINT drains, then exits 0.")
    p.add_argument("--model", required=True, help="led-flax checkpoint, HF LED directory, or hub id (online only)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine "
                                                        "only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=at_least(0), default=8000, help="the port (default: 8000; 0: any free port)")
    p.add_argument("--max-batch-size", type=at_least(1), default=8, metavar="N",
                   help="documents per batch, rounded up to a multiple of the devices (default: 8)")
    p.add_argument("--max-wait-ms", type=finite, default=10.0, metavar="MS",
                   help="a batch runs when full or when its oldest document has waited this long (default: 10)")
    p.add_argument("--max-queue", type=at_least(1), default=256, metavar="N",
                   help="documents waiting at most; past it requests get 429 (default: 256)")
    p.add_argument("--max-body-mb", type=finite, default=16.0, metavar="MB",
                   help="the largest request body; larger ones get 413 (default: 16)")
    p.add_argument("--timeout-s", type=finite, default=120.0, metavar="S",
                   help="a request not answered by then gets 504 (default: 120)")
    p.add_argument("--drain-timeout-s", type=finite, default=30.0, metavar="S",
                   help="on SIGTERM/SIGINT, how long queued and running requests may take to finish (default: 30)")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="require the key this file holds, as 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
                        "(/health and /metrics need none)")
    p.add_argument("--max-num-beams", type=at_least(1), default=16, metavar="N",
                   help="the most beams a request may ask for; each new count compiles a program (default: 16)")
    p.add_argument("--buckets", metavar="N,N,...",
                   help="padded input lengths in tokens (default: powers of two times the window, up to the "
                        "encoder's positions)")
    p.add_argument("--max-programs", type=at_least(1), default=32, metavar="N",
                   help="compiled programs kept; the least recently used go first (default: 32)")
    _inference_arguments(p)
    p.set_defaults(func=cmd_serve, interrupted=lambda a: "stopped at once: requests in flight, if any, were not "
                                                         "answered (one signal drains them first)")

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
    args.argv = [str(a) for a in (argv if argv is not None else sys.argv[1:])]
    with _one_line_warnings(prefix), _sigterm_as_interrupt():
        try:
            return args.func(args)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            print(f"{prefix}: {'terminated' if terminated else 'interrupted'}; {args.interrupted(args)}",
                  file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except Exception as e:
            code = getattr(e, "exit_code", None)  # training's NaN stop is 3
            if code is None and not isinstance(e, (ValueError, OSError, ImportError)):
                traceback.print_exc()
                print(f"{prefix}: internal error: {type(e).__name__}: {e} (a bug in led-flax: please report it "
                      f"with the traceback above)", file=sys.stderr)
                return EXIT_INTERNAL
            print(f"{prefix}: error: {_error_message(e)}", file=sys.stderr)
            return code if code is not None else EXIT_USAGE

