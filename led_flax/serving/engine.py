"""The server's device side: a model on the local devices, its documents cut and bucketed as
`summarize` does (`led_flax.summarization.rows`), and a bounded cache of compiled programs, one per
(bucket, static settings), each for the server's fixed batch.

Rows of one batch share a bucket and the static part of their settings; their numbers (length
penalty, temperature, top-p, repetition penalty, seed) go in as per-row values
(`led_flax.decoding.settings`), so requests with other values share a program and a batch. The
ids equal `summarize`'s for the same document and settings: the same rows, the same program, and a
row's result does not depend on the other rows of its batch.
"""

from __future__ import annotations

import collections
import secrets
import time
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from led_flax.decoding import generation, settings as settings_lib
from led_flax.decoding.settings import MAX_SEED
from led_flax.decoding.generation_config import GenerationConfig
from led_flax.io import pretrained
from led_flax.io.checkpoint import CheckpointError
from led_flax.model.attention import kernel_mesh
from led_flax.parallel import sharding as sharding_lib
from led_flax.summarization.batch import SAMPLING_KEY, batch_layout, generation_settings
from led_flax.summarization.buckets import bucket_for, default_buckets
from led_flax.summarization.rows import padded_batch, summary_texts, truncated
from led_flax.utils.compilations import counting_compilations

from .metrics import Metrics
from .options import ServeOptions
from .requests import RequestError, SummarizeRequest


class ProgramKey(NamedTuple):
    bucket: int  # padded input tokens
    static: GenerationConfig  # `settings.static_part`: what the program is compiled for


class Row(NamedTuple):
    """One document, ready for a batch."""

    ids: list[int]  # its tokens, cut to the encoder's positions
    key: ProgramKey
    settings: GenerationConfig  # resolved, one value per setting
    seed: int  # [0, 2**32): it samples from fold_in(SAMPLING_KEY, seed)


class Generated(NamedTuple):
    summary_text: str
    generated_tokens: int  # decoder tokens after the start token, eos included, padding not


class Prepared(NamedTuple):
    """A request's documents: a Row each (None for an empty document, whose summary is ""), their
    input token counts, and the seeds they sample with (None when not sampling)."""

    rows: list[Row | None]
    input_tokens: list[int]
    seeds: list[int] | None


class Engine:
    """model: a LoadedModel (a summarization checkpoint with its tokenizer). Raises CheckpointError
    for a model without a tokenizer or with another head."""

    def __init__(self, model: pretrained.LoadedModel, options: ServeOptions, metrics: Metrics):
        model.require_head("conditional_generation", "summarization")
        model = model.quantized(options.quantize).with_compute(options.compute_dtype, options.cross_cache,
                                                               options.attention_implementation)
        if model.tokenizer is None:
            raise CheckpointError(f"{model.source} has no tokenizer files (vocab.json and merges.txt, or "
                                  f"tokenizer.json); copy them from the checkpoint it was made from")
        self.model, self.tokenizer, self.metrics = model, model.tokenizer, metrics
        self.limit = model.config.max_encoder_position_embeddings
        over = [b for b in options.buckets or () if b > self.limit]
        if over:
            raise ValueError(f"buckets {over} exceed the model's {self.limit} encoder positions; the largest bucket "
                             f"is the positions ({self.limit}), so drop them")
        buckets = [b for b in (options.buckets or default_buckets(model.config)) if b < self.limit]
        self.buckets = buckets + [self.limit]
        devices = jax.local_devices()
        self.batch = -(-options.max_batch_size // len(devices)) * len(devices)  # whole rows per device
        mesh = sharding_lib.make_mesh(data=len(devices), devices=devices, sequence=1)
        self._rows_sharding = batch_layout(mesh)
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self.params = jax.device_put(model.params, self._replicated)
        self.default = generation_settings(model, {})  # the checkpoint's own: the warm-up programs'
        self._programs: collections.OrderedDict[ProgramKey, Any] = collections.OrderedDict()
        self._max_programs = options.max_programs  # the cache is used from the device thread alone

    # ------------------------------------------------------------------------------------------ requests
    def settings(self, overrides) -> GenerationConfig:
        """The checkpoint's settings with a request's overrides, resolved. RequestError (400) for values
        that do not fit together or with the model."""
        try:
            return generation_settings(self.model, overrides)
        except (ValueError, TypeError) as e:  # named as the client names them: parameters, not fields
            message = str(e).replace("GenerationConfig: ", "").replace("GenerationConfig.", "parameter ")
            if "max_new_tokens" in overrides and "max_length" in message and "max_length" not in overrides:
                message += f" (max_new_tokens {overrides['max_new_tokens']} gives max_length " \
                           f"{overrides['max_new_tokens'] + 1}: it adds the decoder start token)"
            raise RequestError(400, "invalid_parameter", message) from None

    def prepare(self, request: SummarizeRequest) -> Prepared:
        """Tokenizes and buckets a request's documents (CPU work: run it off the event loop). Raises
        RequestError: 400 for bad settings, 413 for an over-long document with truncation false."""
        config = self.settings(request.generation)
        static = settings_lib.static_part(config)
        sampling = config.do_sample
        first = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        seeds = [(first + j) % (MAX_SEED + 1) for j in range(len(request.inputs))]
        encoded = self.tokenizer.encode_batch(list(request.inputs))
        rows: list[Row | None] = []
        counts = []
        for j, (text, ids) in enumerate(zip(request.inputs, encoded)):
            if len(ids) > self.limit and not request.truncation:
                raise RequestError(413, "input_too_long", f"inputs[{j}] has {len(ids)} tokens, more than the "
                                   f"model's {self.limit} positions; shorten it, or send \"truncation\": true to "
                                   f"summarize its first {self.limit} tokens")
            ids = truncated(ids, self.limit)
            counts.append(len(ids) if text.strip() else 0)
            if not text.strip():  # as summarize: an empty document's summary is empty, not generated
                rows.append(None)
                continue
            rows.append(Row(ids=ids, key=ProgramKey(bucket_for(len(ids), self.buckets), static), settings=config,
                            seed=seeds[j] if sampling else 0))
        return Prepared(rows=rows, input_tokens=counts, seeds=seeds if sampling else None)

    # ------------------------------------------------------------------------------------------ programs
    def _placed(self, rows: Sequence[Row], bucket: int):
        """The program's arguments for `rows` (padded to the batch with copies of the first)."""
        fill = list(rows) + [rows[0]] * (self.batch - len(rows))
        inputs = padded_batch(self.tokenizer, [r.ids for r in fill], bucket)
        stacked = settings_lib.stack([r.settings for r in fill])
        _, values = settings_lib.split(stacked, self.batch, seeds=[r.seed for r in fill])
        # placed as `generate` places them (the key and the values as host arrays), so that the program is
        # the one `summarize` compiles: one entry in the persistent cache serves both
        arrays = [jax.device_put(jnp.asarray(x, jnp.int32), self._rows_sharding) for x in inputs]
        return arrays, SAMPLING_KEY, values, inputs

    def _program(self, key: ProgramKey, arrays, prng_key, values):
        """The compiled program for `key`, from the bounded cache or compiled (or read from JAX's
        persistent cache) now; the least recently used one is evicted past the bound."""
        program = self._programs.get(key)
        if program is not None:
            self._programs.move_to_end(key)
            return program
        start = time.perf_counter()
        with counting_compilations() as counted, kernel_mesh(self.model.config.attention_implementation,
                                                             self._rows_sharding):
            program = generation.program_for(self.model.module).lower(
                self.params, *arrays, prng_key, values, model=self.model.module, cfg=key.static, slots=1,
                mesh=None).compile()
        self.metrics.compiled(counted.compiled, counted.cache_hits, time.perf_counter() - start)
        self._programs[key] = program
        while len(self._programs) > self._max_programs:
            self._programs.popitem(last=False)
            self.metrics.program_evictions.inc()
        self.metrics.programs_cached.set(len(self._programs))
        return program

    def warm_up(self) -> int:
        """Compiles (or reads from the persistent cache) every bucket's program at the server's batch
        with the checkpoint's own settings; returns how many."""
        row = Row(ids=truncated(self.tokenizer.encode_batch(["warm-up"])[0], self.limit),
                  key=ProgramKey(self.buckets[0], settings_lib.static_part(self.default)), settings=self.default,
                  seed=0)
        for bucket in self.buckets:
            key = row.key._replace(bucket=bucket)
            arrays, prng_key, values, _ = self._placed([row], bucket)
            self._program(key, arrays, prng_key, values)
        return len(self.buckets)

    def run(self, rows: Sequence[Row]) -> list[Generated]:
        """Generates for `rows` (at most the batch; one ProgramKey) in one program call."""
        key = rows[0].key
        arrays, prng_key, values, inputs = self._placed(rows, key.bucket)
        program = self._program(key, arrays, prng_key, values)
        result = program(self.params, *arrays, prng_key, values)
        sequences = np.asarray(result.sequences)[:len(rows), :int(result.length)]
        pad = self.tokenizer.pad_token_id
        real = int(np.asarray(inputs.attention_mask)[:len(rows)].sum())
        generated = [int((s[1:] != pad).sum()) for s in sequences]
        self.metrics.batch_done(len(rows), real, self.batch * key.bucket, sum(generated))
        return [Generated(t, g) for t, g in zip(summary_texts(self.tokenizer, sequences), generated)]
