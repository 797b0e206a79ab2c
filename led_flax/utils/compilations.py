"""Counting the XLA programs a block of code compiles, or reads from JAX's persistent compilation cache,
through `jax.monitoring`'s events (what `SummaryReport` and the server's metrics report).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Iterator

import jax


@dataclasses.dataclass
class Compilations:
    """What a `counting_compilations` block obtained. executables: every XLA executable JAX obtained,
    compiled or read from the persistent cache; cache_hits: those read from the cache."""

    executables: int = 0
    cache_hits: int = 0

    @property
    def compiled(self) -> int:
        """The executables compiled, not read from the cache."""
        return self.executables - self.cache_hits


_COUNTING: contextvars.ContextVar[Compilations | None] = contextvars.ContextVar("led_flax_compilations",
                                                                                default=None)
# jax 0.10's events: one per executable obtained, and one before it for each persistent-cache read
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def _on_event(event: str, **_) -> None:
    counter = _COUNTING.get()
    if counter is not None and event == _CACHE_HIT:
        counter.cache_hits += 1


def _on_duration(event: str, duration: float, **_) -> None:
    counter = _COUNTING.get()
    if counter is not None and event == _BACKEND_COMPILE:
        counter.executables += 1


@functools.cache
def _listen_to_compilations() -> None:
    """Registers the two jax.monitoring listeners, once per process; they count only inside
    `counting_compilations`, in the context (thread) that opened it."""
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)


@contextlib.contextmanager
def counting_compilations() -> Iterator[Compilations]:
    """Counts the executables JAX obtains inside the block, in this thread (context) only."""
    _listen_to_compilations()
    counter = Compilations()
    token = _COUNTING.set(counter)
    try:
        yield counter
    finally:
        _COUNTING.reset(token)
