"""Batch summarization of long documents: `summarize(texts, model, SummarizeOptions(...))`.

Documents are sorted into a small fixed set of length buckets, so a whole corpus compiles at most
one program per bucket; batches are padded to a fixed size and sharded over every local device
through a `Mesh`; compiled programs persist in JAX's compilation cache, so a second run starts
fast. With an output file, results are appended to a progress file as batches finish (an
interrupted run, started again with the same model and settings, resumes where it stopped;
`led_flax.summarization.progress` records what the summaries depend on), the output is written atomically in
input order at the end, and the progress file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from led_flax.decoding import generation, settings as settings_lib
from led_flax.io import pretrained
from . import plan, progress
from led_flax.parallel import sequence
from led_flax.parallel import sharding as sharding_lib
from .buckets import bucket_for, default_buckets
from .rows import padded_batch, summary_texts, truncated
from led_flax.model.cache import CROSS_CACHES
from led_flax.model.config import ATTENTION_IMPLEMENTATIONS
from led_flax.io.checkpoint import CheckpointError
from led_flax.utils.compilations import counting_compilations
from led_flax.utils.files import TMP_TAG, WriteError, exclusive, write_atomic, write_target, writing
from led_flax.decoding.generation import GenerationConfig
from led_flax.model.quantize import QuantizeSpec

log = logging.getLogger("led_flax.summarization.batch")

# the key a sampling summarize draws from: document i from fold_in(SAMPLING_KEY, its seed)
SAMPLING_KEY = np.array([0, 0], np.uint32)  # jax.random.PRNGKey(0), without touching a device at import
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "led-flax", "jax")
OUTPUT_FORMATS = ("text", "jsonl")


class InputWarning(UserWarning):
    """A document that was summarized anyway (truncated) or skipped (empty, unreadable)."""


class NonFiniteWarning(UserWarning):
    """A document whose generation met NaN or infinite scores: its summary (often empty) is not the
    model's answer. The weights hold NaN or infinity, or the compute dtype overflowed."""


def checked_model_options(quantize: QuantizeSpec | str | None, compute_dtype: str | None,
                          cross_cache: str | None, attention_implementation: str | None = None) -> QuantizeSpec | None:
    """How a model is prepared for inference (`summarize`'s options, the server's): returns the
    quantization as a QuantizeSpec (a scheme name is read as one). Raises ValueError for an unknown
    scheme, compute dtype, cross cache or attention implementation."""
    if attention_implementation not in (None,) + ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got "
                         f"{attention_implementation!r}")
    if compute_dtype not in (None,) + pretrained.COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {pretrained.COMPUTE_DTYPES}, got {compute_dtype!r}")
    if cross_cache not in (None,) + CROSS_CACHES:
        raise ValueError(f"cross_cache must be one of {CROSS_CACHES}, got {cross_cache!r}")
    return QuantizeSpec(quantize) if isinstance(quantize, str) else quantize


def checked_buckets(buckets) -> tuple[int, ...] | None:
    """Padded input lengths, sorted (None: the default ones). Raises ValueError for none, or one below 1."""
    if buckets is None:
        return None
    out = tuple(sorted(int(b) for b in buckets))
    if not out or out[0] < 1:
        raise ValueError(f"buckets must be token counts of at least 1, got {list(buckets)}")
    return out


@dataclasses.dataclass(frozen=True)
class SummarizeOptions:
    """How `summarize` runs. Every field has a default; later features add fields here.

    batch_size: documents per batch, rounded up to a whole number per local device.
    buckets: the padded input lengths in tokens (default `led_flax.summarization.buckets.default_buckets`); the
        encoder's positions are always the last bucket.
    truncate: documents longer than the encoder's positions are cut to them with an InputWarning
        naming each; with False they are a ValueError raised before any work.
    generation: overrides of the checkpoint's GenerationConfig fields, e.g. {"num_beams": 4,
        "max_length": 256}; an unknown name raises TypeError here, when the options are made. Or whole
        settings, a GenerationConfig (`generation_settings`' result), used as they are.
    output: a file that receives the summaries, written atomically in input order once all are done.
    output_format: "text" (one summary a line, whitespace folded) or "jsonl" ({"source": name,
        "summary": ...} a line).
    progress_file: finished batches are appended here and read back by a rerun, which skips the
        documents already done (same index, same text). Default: OUTPUT.progress.jsonl when
        `output` is set, removed once the output is written; one given without `output` is kept.
        Its first line records the model and every setting (`led_flax.summarization.progress.RunRecord`): a rerun
        with another model or other settings raises ResumeError naming the differences.
    restart: discard what the progress file holds and start afresh.
    progress_bar: a tqdm bar on stderr.
    compilation_cache: the folder of JAX's persistent compilation cache; None leaves JAX's own
        setting as it is.
    sequence_devices: split each document's tokens over this many local devices (`led_flax.parallel.sequence`;
        the batch goes over the rest). Buckets are then multiples of `sequence.length_unit`: with 8
        devices and led-base's 1,024-token window, 4,096 tokens, so a short document pays for padding
        up to that.
    quantize: quantize a float model's weights at load: a scheme ("int8", "int4", "nf4") or a
        QuantizeSpec (group size, ...); a model already quantized so is used as it is.
    compute_dtype: "float32", "bfloat16" or "float16" (None: the model's own, float32 by default).
    cross_cache: "int8" caches generation's cross-attention keys and values as int8 (None: as the model).
    attention_implementation: the encoder's local attention, "xla", "splash" (the Pallas kernel, for
        TPU) or "auto" (`LEDConfig.attention_implementation`; None: the model's own, xla by default).
    Raises ValueError for a batch size below 1, a bucket below 1, an unknown output format, scheme,
    compute dtype, cross cache or attention implementation, or sequence devices that do not divide the
    local devices.
    """

    batch_size: int = 4
    buckets: tuple[int, ...] | None = None
    truncate: bool = True
    generation: Mapping[str, Any] | GenerationConfig = dataclasses.field(default_factory=dict)
    output: str | None = None
    output_format: str = "text"
    progress_file: str | None = None
    progress_bar: bool = True
    compilation_cache: str | None = DEFAULT_CACHE
    restart: bool = False
    sequence_devices: int = 1
    quantize: QuantizeSpec | str | None = None
    compute_dtype: str | None = None
    cross_cache: str | None = None
    attention_implementation: str | None = None

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be an integer, got {self.batch_size!r}")
        object.__setattr__(self, "quantize", checked_model_options(self.quantize, self.compute_dtype,
                                                                   self.cross_cache, self.attention_implementation))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        object.__setattr__(self, "buckets", checked_buckets(self.buckets))
        if isinstance(self.sequence_devices, bool) or not isinstance(self.sequence_devices, (int, np.integer)) \
                or self.sequence_devices < 1:
            raise ValueError(f"sequence_devices must be a positive integer, got {self.sequence_devices!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if isinstance(self.generation, GenerationConfig):
            return  # whole settings, resolved for the model by `generation_settings`
        object.__setattr__(self, "generation", dict(self.generation))
        try:
            GenerationConfig().replace(**self.generation)  # TypeError naming any unknown setting
        except ValueError:
            pass  # values are checked together with the checkpoint's own settings, in `summarize`

    @property
    def resume_file(self) -> str | None:
        """Where finished batches are appended: `progress_file`, else OUTPUT.progress.jsonl, else None."""
        if self.progress_file:
            return self.progress_file
        return self.output + ".progress.jsonl" if self.output else None


@dataclasses.dataclass
class SummaryReport:
    """What one `summarize` call did: pass one in as `report=` and read it when the call returns.

    documents: texts given. skipped: (index, reason) of documents given an empty summary.
    non_finite: indices of documents whose generation met NaN or infinite scores (a NonFiniteWarning
    names each): their summaries are not to be trusted.
    truncated: indices of documents cut to the encoder's positions. resumed: documents read back
    from the progress file instead of generated. buckets: bucket length (tokens) -> documents
    generated in it. real_tokens / padded_tokens: input tokens of the batches run, without / with
    padding. generated_tokens: decoder tokens generated, padding excluded. programs_compiled: XLA
    programs compiled during the call (one generation program per bucket and batch shape, and the
    small helper programs JAX compiles on its first use in a process); programs_from_cache: XLA
    programs read from the persistent compilation cache instead of compiled. seconds: wall time of
    the generation loop. generation: the settings used (`generation_settings`; `describe_generation`
    says them in one line).
    """

    documents: int = 0
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    truncated: list[int] = dataclasses.field(default_factory=list)
    non_finite: list[int] = dataclasses.field(default_factory=list)
    resumed: int = 0
    buckets: dict[int, int] = dataclasses.field(default_factory=dict)
    real_tokens: int = 0
    padded_tokens: int = 0
    generated_tokens: int = 0
    programs_compiled: int = 0
    programs_from_cache: int = 0
    seconds: float = 0.0
    generation: GenerationConfig | None = None

    @property
    def padding_waste(self) -> float:
        """The fraction of input tokens that were padding (0.0 when no batch ran)."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0

    def describe(self) -> str:
        """One line for a log or a terminal."""
        done = f", {self.resumed} resumed" if self.resumed else ""
        if not self.padded_tokens:
            return f"{self.documents} documents{done}, nothing left to generate"
        bad = f", {len(self.non_finite)} with non-finite scores" if self.non_finite else ""
        return (f"{self.documents} documents{done}{bad}, buckets {self.buckets}, programs: {self.programs_compiled} "
                f"compiled, {self.programs_from_cache} read from the compilation cache; padding waste "
                f"{100 * self.padding_waste:.1f}%, {self.seconds:.1f} s")


def enable_compilation_cache(path: str | None = DEFAULT_CACHE) -> None:
    """JAX's persistent compilation cache in `path`: the second run of the same shapes skips
    compilation. None leaves JAX's setting as it is."""
    if path:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------------------------------------- output
def format_summaries(summaries: Sequence[str], names: Sequence[str], output_format: str) -> list[str]:
    """The lines of an output file: "text" folds each summary's whitespace onto one line; "jsonl"
    writes {"source": name, "summary": summary}."""
    if output_format == "jsonl":
        return [json.dumps({"source": n, "summary": s}, ensure_ascii=False) for n, s in zip(names, summaries)]
    return [" ".join(s.split()) for s in summaries]


def _check_folder(path: str, what: str) -> None:
    """Raises before any work when `path` (a file to write) cannot be: a directory, a missing
    folder, or a folder on a read-only or full filesystem (a probe file is written and removed)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"the {what} {path} is a directory; name a file, such as "
                                f"{os.path.join(path, 'summaries.txt')}")
    target = write_target(path)  # a symbolic link is written through: its target's folder is the one
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of the {what} {path} does not exist; create it first")
    with writing(path):
        fd, probe = tempfile.mkstemp(prefix=f".{os.path.basename(target)}{TMP_TAG}{os.getpid()}-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)


def check_output(options: SummarizeOptions) -> None:
    """Raises FileNotFoundError, IsADirectoryError, NotADirectoryError or WriteError when the output,
    the progress file or the compilation cache cannot be written; `summarize` calls it before any work."""
    if options.output:
        _check_folder(options.output, "output")
    if options.progress_file:
        _check_folder(options.progress_file, "progress file")
    cache = options.compilation_cache
    if cache and os.path.exists(cache) and not os.path.isdir(cache):
        raise NotADirectoryError(f"the compilation cache {cache} is a file; name a folder, or turn the cache off "
                                 f"(compilation_cache=None, --no-cache)")


class PeerLostError(ValueError):
    """A collective step of a multi-process summarize failed because another process stopped (killed,
    interrupted, crashed); the finished batches are in the progress files."""


def _collective(what: str, fn, *args):
    """`fn(*args)`, a cross-process step (multihost_utils); its failure, a peer gone, as PeerLostError."""
    try:
        return fn(*args)
    except Exception as e:  # jaxlib's JaxRuntimeError: gloo's or the coordination service's failure
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PeerLostError(f"{what} failed: another process of the job stopped ({reason}); the finished batches "
                            f"are kept in the progress files: rerun the same command, with any number of processes, "
                            f"to resume") from None


def _agree(ok: bool) -> bool:
    """Process 0's verdict (ok or refused), broadcast to every process of the job."""
    from jax.experimental import multihost_utils
    return bool(_collective("agreeing on the progress files", multihost_utils.broadcast_one_to_all, np.int32(ok)))


def _check_same_job(record: progress.RunRecord, path: str) -> None:
    """Every process of a job must run the same model, settings and documents into the same output:
    a digest of each process's run record and output name, gathered and compared with process 0's.
    Raises ValueError on every process, naming the others, before any work."""
    from jax.experimental import multihost_utils
    mine = json.dumps({"model": record.model, "settings": record.settings, "output": os.path.basename(path)},
                      sort_keys=True)
    digest = np.frombuffer(hashlib.sha1(mine.encode()).digest(), np.uint8)
    every = np.asarray(_collective("comparing the processes' commands", multihost_utils.process_allgather,
                                   digest)).reshape(jax.process_count(), -1)
    odd = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if odd:
        raise ValueError(f"processes {odd} were given another model, other settings, other documents or another "
                         f"--out than process 0: every process of a job runs the same command on the same inputs")


def _check_shared_folder(path: str) -> None:
    """The job's assumption, checked at start: every process sees the folder of `path` (one shared
    filesystem, as on pod hosts). Process 0 writes a marker; each process reads it. Raises
    ValueError on every process when one cannot."""
    from jax.experimental import multihost_utils
    marker = os.path.join(os.path.dirname(write_target(path)), f".{os.path.basename(path)}.job-marker")
    token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(1, 2 ** 31 - 1))))
    if jax.process_index() == 0:
        write_atomic(marker, str(token))
    multihost_utils.sync_global_devices("led_flax.summarize: marker written")
    try:
        with open(marker, encoding="utf-8") as f:
            seen = f.read().strip() == str(token)
    except OSError:
        seen = False
    flags = multihost_utils.process_allgather(np.int32(seen))
    multihost_utils.sync_global_devices("led_flax.summarize: marker read")
    if jax.process_index() == 0:
        os.remove(marker)
    blind = [p for p, f in enumerate(np.asarray(flags).reshape(-1)) if not f]
    if blind:
        raise ValueError(f"processes {blind} cannot see {os.path.dirname(write_target(path))}, where process 0 "
                         f"writes: a job of several processes needs its output folder on a filesystem every host "
                         f"shares; name one with --out")


def _lengths(tokenizer, texts: Sequence[str], processes: int, me: int) -> tuple[list[int], dict[int, list[int]]]:
    """Every document's token count, and {index: token ids} of the documents tokenized here. Alone, a
    process tokenizes them all, once (for the buckets and for the batches). In a job of several, the
    plan needs every count but each process summarizes only its share: each tokenizes every
    processes-th document and the counts are gathered (one int32 per document from each process), so
    a host tokenizes about 1/processes of the corpus to plan it instead of all of it."""
    if processes == 1:
        encoded = tokenizer.encode_batch(list(texts))
        return [len(ids) for ids in encoded], dict(enumerate(encoded))
    from jax.experimental import multihost_utils
    share = list(range(me, len(texts), processes))
    encoded = dict(zip(share, tokenizer.encode_batch([texts[i] for i in share])))
    counts = np.zeros(len(texts), np.int32)  # [documents]: this process's share, zeros elsewhere
    counts[share] = [len(encoded[i]) for i in share]
    every = np.asarray(_collective("gathering the documents' lengths", multihost_utils.process_allgather, counts))
    return every.reshape(processes, len(texts)).sum(axis=0).tolist(), encoded


def _plan(todo: list[int], buckets: list[int], documents: int, processes: int, batch_size: int,
          generation_config: GenerationConfig) -> dict[int, int]:
    """{document index: process} for the documents `todo` (their buckets `buckets`), computed by
    process 0 (`plan.assign`) and broadcast, so that every process holds the same plan."""
    from jax.experimental import multihost_utils
    owners = np.full(documents, -1, np.int32)
    if jax.process_index() == 0:
        steps, beams = generation_config.max_length, generation_config.num_beams
        owners[todo] = plan.assign(buckets, processes, batch_size, steps, beams)
        load = plan.costs(buckets, owners[todo], processes, batch_size, steps, beams)
        log.info("plan: %s documents per process, planned cost %s", np.bincount(owners[todo], minlength=processes),
                 [round(c) for c in load])
    owners = np.asarray(_collective("sharing the plan", multihost_utils.broadcast_one_to_all, owners))
    return {i: int(owners[i]) for i in todo}


def batch_layout(mesh) -> NamedSharding:
    """Where `summarize` puts a batch of token arrays [b, n]: the documents over the mesh's `data`
    axis, their tokens over its `sequence` axis when that splits documents. `mesh` may be abstract
    (`jax.export` lowers a bucket's program with it: tests/test_lowering.py)."""
    split = sequence.devices_of(mesh) > 1
    return NamedSharding(mesh, PartitionSpec("data", sequence.SEQUENCE_AXIS if split else None))


# ---------------------------------------------------------------------------------------------- settings
def generation_settings(model: pretrained.LoadedModel,
                        generation: Mapping[str, Any] | GenerationConfig | None = None) -> GenerationConfig:
    """The generation settings `summarize` uses, resolved once for the model: the checkpoint's (its
    generation_config.json, else transformers' defaults) with the overrides `generation` (a mapping)
    applied, special tokens filled from the model's config. `generation` may instead be whole settings
    (a GenerationConfig, such as this function's own result, which the command line shows before it
    summarizes): they are taken as they are, not resolved again.

    Raises ValueError for settings that do not fit together or with one summary per document.
    """
    base = generation if isinstance(generation, GenerationConfig) else \
        model.generation_config.replace(**dict(generation or {}))
    config = base.resolved(model.config)
    several = settings_lib.per_row_fields(config)
    if several:
        raise ValueError(f"summarize applies one value of each setting to every document, but {', '.join(several)} "
                         f"holds one per input; give one value (per-input values are for led_flax.generate)")
    if config.num_return_sequences != 1:
        raise ValueError(f"summarize gives one summary per document, so num_return_sequences must be 1 (got "
                         f"{config.num_return_sequences}); call led_flax.generate for several per input")
    if config.max_length < 2:
        raise ValueError(f"max_length {config.max_length} leaves no room for a summary: it counts the decoder "
                         f"start token, so use at least 2")
    if config.min_length > config.max_length:
        raise ValueError(f"min_length {config.min_length} exceeds max_length {config.max_length}; lower min_length "
                         f"or raise max_length")
    return config


_SHOWN = ("num_beams", "do_sample", "max_length", "min_length", "length_penalty", "no_repeat_ngram_size",
          "early_stopping", "repetition_penalty")


def describe_generation(config: GenerationConfig, model: pretrained.LoadedModel | None = None,
                        overrides: Mapping[str, Any] | None = None) -> str:
    """One line naming the search and every setting that is not transformers' default (and always
    max_length), and where the settings came from (given, the checkpoint's file, the defaults)."""
    defaults = GenerationConfig()
    search = ("sampling" if config.do_sample else
              f"beam search (num_beams={config.num_beams})" if config.num_beams > 1 else "greedy search")
    skip = {"num_beams", "do_sample", "decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id"}
    shown = [f.name for f in dataclasses.fields(config) if f.name not in skip
             and (f.name == "max_length" or getattr(config, f.name) != getattr(defaults, f.name))]
    shown.sort(key=lambda n: _SHOWN.index(n) if n in _SHOWN else len(_SHOWN))
    line = ", ".join([search] + [f"{n}={getattr(config, n)}" for n in shown])
    if model is not None:
        given = sorted(overrides or {})
        has_file = os.path.isfile(os.path.join(os.fspath(model.source), "generation_config.json"))
        origin = ("the checkpoint's generation_config.json" if has_file else
                  "transformers' defaults (the checkpoint has no generation_config.json)")
        line += f" (from {origin}" + (f"; given: {', '.join(given)})" if given else ")")
    return line


# ---------------------------------------------------------------------------------------------- summarize
def _documents_to_generate(lengths: Sequence[int], texts: Sequence[str], names: Sequence[str], limit: int,
                           truncate: bool, report: SummaryReport) -> list[int]:
    """The indices worth generating; records (and warns about) the empty and the truncated ones."""
    todo = []
    for i, (text, n) in enumerate(zip(texts, lengths)):
        if not text.strip():
            warnings.warn(f"{names[i]} is empty: its summary is empty", InputWarning, stacklevel=3)
            report.skipped.append((i, "empty"))
            continue
        if n > limit:
            if not truncate:
                raise ValueError(f"{names[i]} has {n} tokens, more than the model's {limit} positions; drop "
                                 f"--no-truncate (truncate=False) to summarize its first {limit} tokens")
            warnings.warn(f"{names[i]} has {n} tokens; only its first {limit} are summarized", InputWarning,
                          stacklevel=3)
            report.truncated.append(i)
        todo.append(i)
    return todo


def summarize(texts: Sequence[str], model: str | os.PathLike | pretrained.LoadedModel,
              options: SummarizeOptions | None = None, *, names: Sequence[str] | None = None,
              report: SummaryReport | None = None,
              on_result: Callable[[int, str], None] | None = None, seeds: Sequence[int] | None = None) -> list[str]:
    """The summaries of `texts`, in input order ("" for an empty document).

    model: a led-flax checkpoint directory, or a `LoadedModel` (`convert.load` reads an HF directory
        or a hub id into one; training builds one around its current params).
    options: batch size, buckets, truncation, generation settings, output file (SummarizeOptions()).
    names: how warnings, errors and jsonl output name each document (default "document I").
    report: a SummaryReport filled in by the call. on_result: called with (index, summary) as each
        document is generated.
    seeds: when sampling, document i draws from fold_in(SAMPLING_KEY, seeds[i]) (integers in
        [0, 2**32); default: its index), so its summary does not depend on the batch or bucket it
        falls in, or on how many processes share the corpus. A rerun resumes only with the same seeds.
    Raises, all before any generation: CheckpointError for a directory that is not a led-flax
    summarization checkpoint or has no tokenizer; ValueError for a document over the positions with
    truncate=False or for generation settings that do not fit together; ResumeError (a ValueError)
    when the progress file was written with another model or other settings (restart=True starts
    afresh); FileNotFoundError, IsADirectoryError or WriteError (an OSError: a full or read-only
    filesystem) for an output that cannot be written, checked before the model is loaded. WriteError
    too when the filesystem fills up during the run; the progress file then keeps what was done.
    OutputBusyError (a ValueError) when another run is writing the same output: the output holds an
    OS lock for the whole run (`led_flax.utils.files.exclusive`).

    In a job of several processes (`jax.distributed` initialised, `jax.process_count()` > 1), every
    process calls `summarize` with the same texts, names and options, and `output` is required, on a
    folder every process sees (checked at start). Process 0 reads every progress file, plans which
    process summarizes which document (`plan`: balanced by a stated cost model) and broadcasts the
    plan; each process then runs its share on its own devices, appending to its own progress file
    (OUTPUT.progress.jsonl.I), with no lockstep between batches; after a final barrier process 0 writes
    the output in input order and returns every summary. The other processes return a list with their
    own summaries and None for the documents of other processes. A rerun resumes whatever the process
    count. Inside a caller's own job there is no supervisor: a process that dies leaves the others
    waiting at the final barrier until jax.distributed's heartbeat timeout aborts them
    (`led-flax summarize` sets that timeout).
    """
    options = options or SummarizeOptions()
    report = report if report is not None else SummaryReport()
    check_output(options)
    with exclusive(options.output) if options.output and jax.process_index() == 0 else contextlib.nullcontext():
        return _summarize(texts, model, options, names, report, on_result, seeds)


def _summarize(texts, model, options: SummarizeOptions, names, report: SummaryReport, on_result,
               seeds) -> list[str]:
    if isinstance(model, (str, os.PathLike)):
        model = pretrained.load(model)
    model.require_head("conditional_generation", "summarization")
    model = model.quantized(options.quantize).with_compute(options.compute_dtype, options.cross_cache,
                                                           options.attention_implementation)
    tokenizer, config = model.tokenizer, model.config
    if tokenizer is None:
        raise CheckpointError(f"{model.source} has no tokenizer files (vocab.json and merges.txt, or tokenizer.json); "
                              f"copy them from the checkpoint it was made from")
    gen_config = report.generation = generation_settings(model, options.generation)
    names = list(names) if names is not None else [f"document {i}" for i in range(len(texts))]
    if len(names) != len(texts):
        raise ValueError(f"{len(names)} names for {len(texts)} texts; give one name per text")
    seeds = settings_lib.check_seeds(seeds, len(texts))  # [documents] uint32
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings: {names[bad[0]]} is a {type(texts[bad[0]]).__name__}")
    resume_file = options.resume_file
    processes, me = jax.process_count(), jax.process_index()
    if processes > 1 and not resume_file:
        raise ValueError(f"a job of {processes} processes shares its work through the output's folder: pass "
                         f"output= (--out FILE) on a folder every process sees")
    saved = progress.Progress(None, {})
    if resume_file:
        record = progress.RunRecord.build(model, gen_config, truncate=options.truncate,
                                          sequence_devices=options.sequence_devices,
                                          corpus=progress.corpus_digest(names, texts),
                                          seeds=progress.seeds_digest(seeds) if gen_config.do_sample else None)
        if processes > 1:
            _check_same_job(record, resume_file)
            _check_shared_folder(resume_file)
        if me == 0:  # one agreed snapshot of the finished documents: process 0's (the plan below)
            refusal = None
            try:
                if options.restart:
                    progress.remove_all(resume_file)
                saved = progress.read_all(resume_file, record)
            except progress.ResumeError as e:
                refusal = e
            if processes > 1:
                _agree(refusal is None)
            if refusal is not None:
                raise refusal
        elif not _agree(True):
            raise progress.ResumeError(f"process 0 refused to resume {resume_file} (its message says why); rerun "
                                       f"with the same model, settings and documents, or with --restart")
    limit = config.max_encoder_position_embeddings
    devices = jax.local_devices()
    split = options.sequence_devices
    if len(devices) % split:
        raise ValueError(f"sequence_devices {split} does not divide the {len(devices)} local devices; use a divisor")
    unit = sequence.length_unit(config, split)
    top = -(-limit // unit) * unit  # the positions, rounded up to whole blocks on every device
    buckets = list(options.buckets or default_buckets(config, devices=split))
    if split > 1 and [b for b in buckets if b % unit]:
        raise ValueError(f"buckets {[b for b in buckets if b % unit]} are not multiples of {unit}, the unit over "
                         f"{split} sequence devices (led_flax.parallel.sequence.length_unit)")
    if buckets[-1] < limit:
        buckets.append(top if split > 1 else limit)

    lengths, encoded = _lengths(tokenizer, texts, processes, me)  # {index: ids} of those tokenized here
    todo = _documents_to_generate(lengths, texts, names, limit, options.truncate, report)
    results: dict[int, str] = {i: "" for i, _ in report.skipped}
    fingerprints = {i: progress.fingerprint(texts[i]) for i in todo}
    done = saved.done if resume_file else {}
    for i in todo:
        if (i, fingerprints[i]) in done:
            results[i] = done[(i, fingerprints[i])]
    todo = [i for i in todo if i not in results]
    report.documents = len(texts)
    report.resumed = len(texts) - len(todo) - len(report.skipped)
    owners = {i: 0 for i in todo}
    if processes > 1:  # process 0's plan, broadcast: every process runs its own share, no lockstep after
        ways = len(devices) // split  # a process's batch: as below, a whole number of rows per device
        owners = _plan(todo, [bucket_for(min(lengths[i], limit), buckets) for i in todo], len(texts), processes,
                       -(-options.batch_size // ways) * ways, gen_config)
        todo = [i for i in todo if owners[i] == me]
        share = len(encoded)
        missing = [i for i in todo if i not in encoded]  # planned here, tokenized by another process
        encoded.update(zip(missing, tokenizer.encode_batch([texts[i] for i in missing])))
        log.info("tokenized %d of %d documents: a share of %d for the plan, %d more planned here", len(encoded),
                 len(texts), share, len(missing))
        resume_file = progress.process_file(resume_file, me)
        saved = progress.read(resume_file) if me else saved
    if report.resumed:
        log.info("resuming: %d documents already summarized", report.resumed)

    enable_compilation_cache(options.compilation_cache)
    rows_ways = len(devices) // split  # devices that hold different documents
    batch = -(-options.batch_size // rows_ways) * rows_ways  # a whole number of rows per device
    mesh = sharding_lib.make_mesh(data=rows_ways, devices=devices, sequence=split)
    batch_sharding = batch_layout(mesh)
    params = jax.device_put(model.params, NamedSharding(mesh, PartitionSpec()))

    by_bucket: dict[int, list[int]] = {}
    for i in todo:
        by_bucket.setdefault(bucket_for(min(lengths[i], limit), buckets), []).append(i)
    report.buckets = {b: len(v) for b, v in sorted(by_bucket.items())}
    batches = [(size, members[k:k + batch]) for size, members in sorted(by_bucket.items())
               for k in range(0, len(members), batch)]
    if resume_file:
        progress.start(resume_file, record, saved, options.restart)
        with writing(resume_file):
            sink = open(resume_file, "a", encoding="utf-8")
    else:
        sink = contextlib.nullcontext()
    from tqdm import tqdm  # only when a run draws its bar: `import led_flax` needs no tqdm
    bar = tqdm(total=len(todo), unit="doc", disable=not options.progress_bar, desc="summarize")
    start = time.perf_counter()
    with counting_compilations() as compilations, sink, bar:
        try:
            for size, rows in batches:
                fill = rows + [rows[0]] * (batch - len(rows))  # a fixed batch shape per bucket
                # truncated to the bucket and padded to exactly its length, global attention on <s>
                # (the top bucket may exceed the positions to split into whole blocks: cut to the positions first)
                ids, mask, glob = padded_batch(tokenizer, [truncated(encoded[i], limit) for i in fill], size)
                compiled, read = compilations.compiled, compilations.cache_hits
                out = generation.generate(model.module, params, ids, mask, glob, gen_config,
                                          prng_key=SAMPLING_KEY, seeds=seeds[fill], num_global_slots=1,
                                          sharding=batch_sharding, mesh=mesh if split > 1 else None)
                if compilations.compiled > compiled:
                    log.info("compiled a program for bucket %d, batch %d", size, batch)
                elif compilations.cache_hits > read:
                    log.info("read the program for bucket %d, batch %d from the compilation cache", size, batch)
                sequences = out.sequences[:len(rows)]
                report.real_tokens += int(mask[:len(rows)].sum())
                report.padded_tokens += batch * size
                report.generated_tokens += int((sequences[:, 1:] != tokenizer.pad_token_id).sum())
                for i, score in zip(rows, np.asarray(out.scores)[:len(rows)]):
                    if not np.isfinite(score):  # a NaN or inf logit reaches the sequence's score
                        report.non_finite.append(i)
                        warnings.warn(f"{names[i]}: generation met non-finite scores (NaN or infinite logits), so its "
                                      f"summary is not the model's answer: the weights hold NaN or infinity, or the "
                                      f"compute dtype overflowed (try compute_dtype float32)", NonFiniteWarning,
                                      stacklevel=2)
                for i, summary in zip(rows, summary_texts(tokenizer, sequences)):
                    results[i] = summary
                    if on_result:
                        on_result(i, results[i])
                if resume_file:
                    progress.append(sink, resume_file, [(i, fingerprints[i], results[i]) for i in rows])
                bar.update(len(rows))
                elapsed = time.perf_counter() - start
                bar.set_postfix(in_tok_s=f"{report.real_tokens / elapsed:.0f}",
                                out_tok_s=f"{report.generated_tokens / elapsed:.1f}")
        finally:
            report.seconds = time.perf_counter() - start
            report.programs_compiled, report.programs_from_cache = compilations.compiled, compilations.cache_hits
    log.info("%s", report.describe())

    if processes > 1:
        from jax.experimental import multihost_utils
        _collective("the final barrier", multihost_utils.sync_global_devices,
                    "led_flax.summarize: every process's share is done")
        if me:
            return [results.get(i) if owners.get(i, -1) == me else None for i in range(len(texts))]
        resume_file = options.resume_file
        merged = progress.read_all(resume_file, record).done
        results.update({i: merged[(i, fingerprints[i])] for i in owners})
    summaries = [results[i] for i in range(len(texts))]
    if options.output:
        try:
            write_atomic(options.output, format_summaries(summaries, names, options.output_format))
        except WriteError as e:
            e.then = f"the summaries are kept in {resume_file}: rerun the same command to write them"
            raise
    if options.output:  # the output is complete: its progress files go (a progress_file alone is kept)
        progress.remove_all(options.resume_file)
    return summaries
