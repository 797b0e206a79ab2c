"""Dynamic batching: the scheduler owns the queue, the batches and the device thread.

Documents wait in groups, one per (length bucket, static settings): a group's documents can share a
program, their numbers travelling as per-row values. The device thread runs a group as soon as it
holds a full batch, or when its oldest document has waited `max_wait_s`; among the groups ready, the
one whose oldest document arrived first. Each document carries a `concurrent.futures.Future`: the
HTTP layer awaits it, and cancels it when its client is gone or its deadline passed, which takes the
document out of the queue if it has not started (a started batch runs to its end). All device work
(the warm-up, compilation, generation) runs on the one device thread, off the event loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Sequence

from .engine import Engine, Generated, ProgramKey, Row
from .metrics import Metrics

log = logging.getLogger("led_flax.serving")


class QueueFull(Exception):
    """Taking these documents would pass the queue's bound."""


@dataclasses.dataclass(eq=False)
class Job:
    """One document in the queue."""

    row: Row
    enqueued: float  # time.monotonic()
    future: concurrent.futures.Future  # -> Generated


class Scheduler:
    def __init__(self, engine: Engine, metrics: Metrics, *, max_batch_size: int, max_wait_s: float,
                 max_queue: int):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_wait_s, self.max_queue = min(max_batch_size, engine.batch), max_wait_s, max_queue
        self._groups: dict[ProgramKey, collections.deque[Job]] = {}
        self._depth = 0
        self._busy = False
        self._cond = threading.Condition()
        self._stopped = False
        self.ready = threading.Event()  # set once the warm-up programs are there
        self.failed: BaseException | None = None  # the warm-up's error, if it failed
        self.warm_up_programs = 0
        self._thread = threading.Thread(target=self._work, name="led-flax-device", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stops the device thread after the batch it runs; documents still queued are cancelled."""
        with self._cond:
            self._stopped = True
            for group in self._groups.values():
                for job in group:
                    job.future.cancel()
            self._groups.clear()
            self._depth = 0
            self.metrics.queue_depth.set(0)
            self._cond.notify_all()
        self._thread.join(timeout)

    def flush(self) -> None:
        """From now on a batch runs as soon as the device is free, full or not (the server drains)."""
        with self._cond:
            self.max_wait_s = 0.0
            self._cond.notify_all()

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        with self._cond:
            return self._depth == 0 and not self._busy

    def submit(self, rows: Sequence[Row]) -> list[concurrent.futures.Future]:
        """Queues documents; a future each, in order. Raises QueueFull (none is queued then)."""
        now = time.monotonic()
        jobs = [Job(row, now, concurrent.futures.Future()) for row in rows]
        with self._cond:
            if self._depth + len(jobs) > self.max_queue:
                raise QueueFull(f"the queue holds {self._depth} documents of at most {self.max_queue}")
            for job in jobs:
                self._groups.setdefault(job.row.key, collections.deque()).append(job)
            self._depth += len(jobs)
            self.metrics.queue_depth.set(self._depth)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def cancel(self, futures: Sequence[concurrent.futures.Future]) -> int:
        """Takes the documents of `futures` that have not started out of the queue; returns how many."""
        targets = set(map(id, futures))
        removed = 0
        with self._cond:
            for key in list(self._groups):
                group = self._groups[key]
                kept = collections.deque(j for j in group if id(j.future) not in targets or not j.future.cancel())
                removed += len(group) - len(kept)
                if kept:
                    self._groups[key] = kept
                else:
                    del self._groups[key]
            self._depth -= removed
            self.metrics.queue_depth.set(self._depth)
        self.metrics.cancelled.inc(removed)
        return removed

    # ------------------------------------------------------------------------------------------ device thread
    def _next_batch(self) -> list[Job] | None:
        """Under the lock: the jobs of the group to run now, or None (then waits until one is due)."""
        while not self._stopped:
            now = time.monotonic()
            due = [(group[0].enqueued, key) for key, group in self._groups.items()
                   if len(group) >= self.max_batch or now - group[0].enqueued >= self.max_wait_s]
            if due:
                key = min(due, key=lambda d: d[0])[1]
                group = self._groups[key]
                jobs = [group.popleft() for _ in range(min(self.max_batch, len(group)))]
                if not group:
                    del self._groups[key]
                self._depth -= len(jobs)
                self.metrics.queue_depth.set(self._depth)
                return jobs
            waits = [self.max_wait_s - (now - g[0].enqueued) for g in self._groups.values()]
            self._cond.wait(timeout=max(min(waits), 0.0005) if waits else None)
        return None

    def _work(self) -> None:
        try:
            self.warm_up_programs = self.engine.warm_up()
        except BaseException as e:  # the server reports it and stops
            self.failed = e
            log.exception("warm-up failed")
            self.ready.set()
            return
        self.ready.set()
        while True:
            with self._cond:
                jobs = self._next_batch()
                if jobs is None:
                    return
                jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
                self._busy = bool(jobs)
            if not jobs:
                continue
            now = time.monotonic()
            for job in jobs:
                self.metrics.queue_seconds.observe(now - job.enqueued)
            try:
                results: list[Generated] = self.engine.run([j.row for j in jobs])
            except BaseException as e:  # a bug: each document's request answers 500, the server goes on
                log.exception("a batch failed")
                for job in jobs:
                    job.future.set_exception(e)
            else:
                for job, result in zip(jobs, results):
                    job.future.set_result(result)
            finally:
                with self._cond:
                    self._busy = False
