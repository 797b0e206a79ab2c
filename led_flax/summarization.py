"""Batch summarization of long documents (application layer: it may import `convert`).

Documents are sorted into a small fixed set of length buckets, so a whole corpus compiles at most
one program per bucket; batches are padded to a fixed size and sharded over every local device
through a `Mesh`; compiled programs persist in JAX's compilation cache, so a second run starts
fast. Results are appended to a progress file as batches finish, so an interrupted run resumes
where it stopped, and the final output is written atomically in input order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from . import pretrained
from .buckets import bucket_for, default_buckets
from .checkpoint import CheckpointError

log = logging.getLogger("led_flax.summarization")

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "led-flax", "jax")


class InputWarning(UserWarning):
    """A document that was summarized anyway (truncated) or skipped (empty, unreadable)."""


@dataclass
class SummaryReport:
    documents: int = 0
    skipped: list = field(default_factory=list)  # (index, reason)
    truncated: list = field(default_factory=list)  # indices
    programs: int = 0  # distinct compiled programs (bucket, batch shape)
    buckets: dict = field(default_factory=dict)  # bucket length -> documents
    real_tokens: int = 0
    padded_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real_tokens / max(self.padded_tokens, 1)


def enable_compilation_cache(path: str | None = DEFAULT_CACHE) -> None:
    """JAX's persistent compilation cache: the second run of the same shapes skips compilation."""
    import jax
    if path:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def summarize(texts: Sequence[str], model, *, batch_size: int = 4, buckets: Sequence[int] | None = None,
              truncate: bool = True, progress: bool = True, progress_file: str | None = None,
              on_result: Callable[[int, str], None] | None = None, compilation_cache: str | None = DEFAULT_CACHE,
              dtype=None, names: Sequence[str] | None = None, report: SummaryReport | None = None,
              **generation) -> list[str]:
    """Summaries of `texts`, in input order.

    model: a led-flax checkpoint directory, or a `LoadedModel` (`convert.load` reads HF directories and
    hub ids into one; the train job's evaluation builds one around its current params).
    generation: settings over the checkpoint's generation_config (num_beams=4, max_length=256, ...).
    truncate: documents longer than the model's positions are cut with a warning naming them; with
    False they are an error, raised before any work.
    progress_file: results are appended here as batches finish, and read back on a rerun.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from tqdm import tqdm

    from .generation import _run, generate

    enable_compilation_cache(compilation_cache)
    if isinstance(model, (str, os.PathLike)):
        model = pretrained.load(model, dtype)
    model.require_head("conditional_generation", "summarization")
    if model.tokenizer is None:
        raise CheckpointError(f"{model.source} has no tokenizer files (vocab.json and merges.txt, or tokenizer.json); "
                              f"copy them from the checkpoint it was made from")
    module, params, config, gen_config, tokenizer = (model.module, model.params, model.config,
                                                     model.generation_config, model.tokenizer)
    gen_config = gen_config.replace(**generation)
    report = report if report is not None else SummaryReport()
    names = list(names) if names is not None else [f"document {i}" for i in range(len(texts))]
    limit = config.max_encoder_position_embeddings
    buckets = sorted(buckets or default_buckets(config))
    if buckets[-1] < limit:
        buckets.append(limit)

    # validate every document before any work
    encoded = tokenizer.encode_batch(texts)  # tokenized once, for the buckets and for the batches
    lengths = [len(ids) for ids in encoded]
    todo = []
    for i, (text, n) in enumerate(zip(texts, lengths)):
        if not text.strip():
            warnings.warn(f"{names[i]} is empty: its summary is empty", InputWarning, stacklevel=2)
            report.skipped.append((i, "empty"))
        elif n > limit and not truncate:
            raise ValueError(f"{names[i]} has {n} tokens, more than the model's {limit} positions; drop "
                             f"--no-truncate (truncate=False) to summarize its first {limit} tokens")
        else:
            if n > limit:
                warnings.warn(f"{names[i]} has {n} tokens; only its first {limit} are summarized", InputWarning,
                              stacklevel=2)
                report.truncated.append(i)
            todo.append(i)
    results: dict[int, str] = {i: "" for i, _ in report.skipped}

    done = {}
    if progress_file and os.path.exists(progress_file):
        with open(progress_file, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption
                done[(rec["index"], rec["fingerprint"])] = rec["summary"]
    fingerprints = {i: _fingerprint(texts[i]) for i in todo}
    for i in list(todo):
        if (i, fingerprints[i]) in done:
            results[i] = done[(i, fingerprints[i])]
    todo = [i for i in todo if i not in results]
    if done:
        log.info("resuming: %d documents already summarized", len(texts) - len(todo) - len(report.skipped))

    devices = jax.local_devices()
    batch = -(-batch_size // len(devices)) * len(devices)  # a whole number of rows per device
    mesh = Mesh(np.array(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    params = jax.device_put(params, replicated)

    by_bucket: dict[int, list[int]] = {}
    for i in todo:
        size = bucket_for(min(lengths[i], limit), buckets)
        by_bucket.setdefault(size, []).append(i)
    report.documents = len(texts)
    report.buckets = {b: len(v) for b, v in sorted(by_bucket.items())}
    programs_before = _run._cache_size()
    sink = open(progress_file, "a", encoding="utf-8") if progress_file else None
    bar = tqdm(total=len(todo), unit="doc", disable=not progress, desc="summarize")
    start = time.perf_counter()
    try:
        for size, members in sorted(by_bucket.items()):
            for k in range(0, len(members), batch):
                rows = members[k:k + batch]
                fill = rows + [rows[0]] * (batch - len(rows))  # a fixed batch shape per bucket
                # truncated to the bucket and padded to exactly its length, global attention on <s>
                enc = tokenizer.pad([encoded[i] for i in fill], max_length=size, pad_to_multiple_of=size)
                ids, mask, glob = enc["input_ids"], enc["attention_mask"], enc["global_attention_mask"]
                known = _run._cache_size()
                out = generate(module, params, ids, mask, glob, gen_config, num_global_slots=1, sharding=sharding)
                if _run._cache_size() > known:
                    log.info("compiling a program for bucket %d, batch %d (%d so far)", size, batch,
                             _run._cache_size() - programs_before)
                summaries = tokenizer.batch_decode(out.sequences[:len(rows)])
                report.real_tokens += int(mask[:len(rows)].sum())
                report.padded_tokens += batch * size
                report.generated_tokens += int((out.sequences[:len(rows), 1:] != tokenizer.pad_token_id).sum())
                for i, summary in zip(rows, summaries):
                    results[i] = summary.strip()
                    if sink:
                        sink.write(json.dumps({"index": i, "fingerprint": fingerprints[i], "summary": results[i]}) + "\n")
                    if on_result:
                        on_result(i, results[i])
                if sink:
                    sink.flush()
                    os.fsync(sink.fileno())
                bar.update(len(rows))
                elapsed = time.perf_counter() - start
                bar.set_postfix(in_tok_s=f"{report.real_tokens / elapsed:.0f}",
                                out_tok_s=f"{report.generated_tokens / elapsed:.1f}")
    finally:
        bar.close()
        if sink:
            sink.close()
    report.seconds = time.perf_counter() - start
    report.programs = _run._cache_size() - programs_before
    log.info("%d documents in %d buckets %s, %d compiled programs, padding waste %.1f%%", len(todo),
             len(by_bucket), report.buckets, report.programs, 100 * report.padding_waste)
    return [results[i] for i in range(len(texts))]
