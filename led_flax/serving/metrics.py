"""The server's Prometheus metrics (`prometheus_client`, in a registry of the server's own), served as
text at `GET /metrics`. Names start with `led_flax_`; counters end in `_total`, as the client adds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    """Counters, gauges and histograms of one server. requests: answered requests by HTTP status;
    errors: refused or failed requests by error type (the JSON body's "type"); documents: documents
    answered; cancelled: documents that left the queue before they started (client gone, timeout);
    queue_depth: documents waiting; batch_size, batch_padding_waste: per batch run; tokens in (real and
    padded) and out; compilations: XLA programs compiled or read from the persistent cache, and the
    programs evicted from the bounded cache; queue_seconds (a document's wait) and request_seconds
    (a request's latency)."""

    def __init__(self, max_batch_size: int):
        self.programs_compiled = self.programs_from_cache = 0  # the counters' values, for the ready line
        self.registry = r = CollectorRegistry()
        self.requests = Counter("led_flax_requests", "Summarize requests answered, by HTTP status", ["status"],
                                registry=r)
        self.errors = Counter("led_flax_errors", "Requests refused or failed, by error type", ["type"], registry=r)
        self.documents = Counter("led_flax_documents", "Documents summarized and answered", registry=r)
        self.cancelled = Counter("led_flax_documents_cancelled",
                                 "Documents that left the queue before they started (client gone, timeout)",
                                 registry=r)
        self.queue_depth = Gauge("led_flax_queue_depth", "Documents waiting for a batch", registry=r)
        self.batch_size = Histogram("led_flax_batch_size", "Documents per batch run",
                                    buckets=tuple(range(1, max_batch_size + 1)), registry=r)
        self.batch_padding_waste = Histogram("led_flax_batch_padding_waste",
                                             "Share of a batch's input tokens that are padding (rows and length)",
                                             buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=r)
        self.input_tokens = Counter("led_flax_input_tokens", "Real input tokens of the batches run", registry=r)
        self.padded_input_tokens = Counter("led_flax_padded_input_tokens",
                                           "Input tokens of the batches run, padding included", registry=r)
        self.generated_tokens = Counter("led_flax_generated_tokens", "Decoder tokens generated (eos included)",
                                        registry=r)
        self.compilations = Counter("led_flax_compilations", "XLA programs compiled", registry=r)
        self.cache_reads = Counter("led_flax_compilation_cache_reads",
                                   "XLA programs read from the persistent compilation cache", registry=r)
        self.compile_seconds = Counter("led_flax_compile_seconds", "Seconds spent obtaining programs", registry=r)
        self.program_evictions = Counter("led_flax_program_evictions",
                                         "Compiled programs evicted from the bounded cache", registry=r)
        self.programs_cached = Gauge("led_flax_programs_cached", "Compiled programs held", registry=r)
        self.queue_seconds = Histogram("led_flax_queue_seconds", "A document's wait for its batch",
                                       buckets=_SECONDS, registry=r)
        self.request_seconds = Histogram("led_flax_request_seconds", "A summarize request's latency",
                                         buckets=_SECONDS, registry=r)

    def compiled(self, compiled: int, cache_reads: int, seconds: float) -> None:
        self.programs_compiled += compiled
        self.programs_from_cache += cache_reads
        self.compilations.inc(compiled)
        self.cache_reads.inc(cache_reads)
        self.compile_seconds.inc(seconds)

    def batch_done(self, rows: int, real_tokens: int, padded_tokens: int, generated: int) -> None:
        self.batch_size.observe(rows)
        self.batch_padding_waste.observe(1.0 - real_tokens / padded_tokens)
        self.input_tokens.inc(real_tokens)
        self.padded_input_tokens.inc(padded_tokens)
        self.generated_tokens.inc(generated)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
