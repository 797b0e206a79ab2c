"""`ServeOptions`: how `led-flax serve` (and `led_flax.serving.Server`) runs."""

from __future__ import annotations

import dataclasses

from led_flax.model.quantize import QuantizeSpec
from led_flax.summarization.batch import DEFAULT_CACHE, checked_buckets, checked_model_options


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """A server's settings. Every field has a default.

    host, port: where it listens (127.0.0.1 unless told otherwise; port 0: any free port, printed).
    max_batch_size: documents per batch; every program is compiled for this batch.
    max_wait_ms: a batch runs when full, or when its oldest document has waited this long.
    max_queue: documents waiting at most; a request that would pass it gets 429 (one with more
        documents than that gets 413: it could never fit).
    max_body_mb: the largest request body (MB, 10**6 bytes); a larger one gets 413.
    timeout_s: a request not answered by then gets 504 (its documents that have not started leave
        the queue).
    drain_timeout_s: on SIGTERM or SIGINT, how long queued and running requests may take to finish.
    api_key: when set, requests must carry `Authorization: Bearer KEY` (or `X-API-Key: KEY`).
    buckets: the padded input lengths (default: `led_flax.summarization.default_buckets`).
    max_programs: compiled programs kept (least recently used evicted; the warm-up ones count too).
    max_num_beams: the most beams a request may ask for (each new count compiles a program).
    compilation_cache: JAX's persistent compilation cache folder (None: JAX's own setting).
    quantize, compute_dtype, cross_cache, attention_implementation: as `SummarizeOptions`'.
    Raises ValueError naming the field for a value out of range.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_body_mb: float = 16.0
    timeout_s: float = 120.0
    drain_timeout_s: float = 30.0
    api_key: str | None = None
    buckets: tuple[int, ...] | None = None
    max_programs: int = 32
    max_num_beams: int = 16
    compilation_cache: str | None = DEFAULT_CACHE
    quantize: QuantizeSpec | str | None = None
    compute_dtype: str | None = None
    cross_cache: str | None = None
    attention_implementation: str | None = None

    def __post_init__(self):
        for name, low in (("max_batch_size", 1), ("max_queue", 1), ("max_programs", 1), ("max_num_beams", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535] (0: any free port), got {self.port!r}")
        for name in ("max_wait_ms", "max_body_mb", "timeout_s", "drain_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or (value == 0 and name != "max_wait_ms"):
                rule = "a number >= 0" if name == "max_wait_ms" else "a positive number"
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; give a key, or none to serve without one")
        object.__setattr__(self, "buckets", checked_buckets(self.buckets))
        object.__setattr__(self, "quantize", checked_model_options(self.quantize, self.compute_dtype,
                                                                   self.cross_cache, self.attention_implementation))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)
