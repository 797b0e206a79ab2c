"""`Server`: the app on uvicorn, the scheduler's device thread, and a clean shutdown.

On SIGTERM or SIGINT (or `drain()`), the server drains: `/health` and new requests answer 503 with
Retry-After, queued and running requests finish (up to `drain_timeout_s`), then the process stops
and `run` returns (the command exits 0). A second signal stops it at once: requests still running
are answered 503 where their connection allows, `forced_by` names the signal, and the command exits
as that signal's interruption (143 or 130).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from typing import Callable

import uvicorn

from led_flax.io import pretrained
from led_flax.summarization.batch import enable_compilation_cache

from .app import ServerState, build_app
from .engine import Engine
from .metrics import Metrics
from .options import ServeOptions
from .scheduler import Scheduler


class ServeError(OSError):
    """The server could not listen: its port is taken or not ours to bind. The message names the fix."""


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT drains instead of stopping: no signal is
    re-raised after (uvicorn's would end the process with the signal's status, not 0)."""

    def __init__(self, config: uvicorn.Config, owner: "Server"):
        super().__init__(config)
        self.owner = owner

    def handle_exit(self, sig: int, frame) -> None:
        if self.owner.state.draining:  # a second signal: stop now
            self.owner.forced_by = signal.Signals(sig)
            self.should_exit = self.force_exit = True
            return
        self.owner.drain(signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        return self.owner._done()


class Server:
    """A summarization endpoint for `model` (a led-flax checkpoint directory or a LoadedModel).

    `run()` serves until drained (blocking; signals handled when called from the main thread);
    `start()` serves from a background thread and returns once listening, for tests and embedding.
    `announce` receives the server's lines (listening, ready, draining). The port is bound when the
    server is made, before the model loads. Raises ServeError when the port cannot be bound,
    CheckpointError for a model that cannot serve summaries.
    """

    def __init__(self, model: str | os.PathLike | pretrained.LoadedModel, options: ServeOptions | None = None,
                 announce: Callable[[str], None] | None = None):
        self.options = options = options or ServeOptions()
        self.announce = announce or (lambda line: None)
        self._socket: socket.socket | None = None
        self._bind()  # first: a port that is taken fails before the model loads
        try:
            loaded = model if isinstance(model, pretrained.LoadedModel) else pretrained.load(model)
            enable_compilation_cache(options.compilation_cache)
            self.metrics = Metrics(options.max_batch_size)
            self.engine = Engine(loaded, options, self.metrics)
        except BaseException:
            self._socket.close()
            raise
        self.scheduler = Scheduler(self.engine, self.metrics, max_batch_size=options.max_batch_size,
                                   max_wait_s=options.max_wait_ms / 1000, max_queue=options.max_queue)
        self.state = ServerState()
        self.app = build_app(self.engine, self.scheduler, self.metrics, options, self.state)
        self._uvicorn: _DrainingServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._ready_announced = False
        self.forced_by: signal.Signals | None = None  # the second signal that stopped the server at once

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def _bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.options.host, self.options.port))
        except OSError as e:
            sock.close()
            raise ServeError(f"cannot listen on {self.options.host}:{self.options.port}: {e.strerror}; pick another "
                             f"--port (0: any free one) or stop what holds it") from None
        sock.listen(2048)
        sock.setblocking(False)
        self._socket = sock

    def drain(self, why: str = "drain()") -> None:
        """Starts draining (thread-safe): new requests get 503, queued and running ones finish."""
        if self.state.draining:
            return
        self._deadline = time.monotonic() + self.options.drain_timeout_s
        self.state.draining = True
        self.scheduler.flush()  # nothing more will join a batch: run what waits now
        self.announce(f"{why}: draining: {self.state.in_flight} requests in flight, new ones get 503 (up to "
                      f"{self.options.drain_timeout_s:g} s)")

    def _done(self) -> bool:
        """Checked by uvicorn every 0.1 s: whether to stop now."""
        if self.scheduler.failed is not None:
            return True
        if self.scheduler.ready.is_set() and not self._ready_announced:
            self._ready_announced = True
            m = self.metrics
            self.announce(f"ready: {self.scheduler.warm_up_programs} warm-up programs ({m.programs_compiled} compiled, "
                          f"{m.programs_from_cache} read from the compilation cache)")
        if not self.state.draining:
            return False
        if self.state.in_flight == 0 and self.scheduler.idle:
            return True
        if time.monotonic() > self._deadline:
            self.announce(f"drain timeout: {self.state.in_flight} requests not answered")
            return True
        return False

    def run(self) -> None:
        """Serves until drained (once: a server that stopped does not start again). Raises the
        warm-up's own error when it failed."""
        self.scheduler.start()
        self.announce(f"listening on {self.url}; warming up {len(self.engine.buckets)} programs (batch "
                      f"{self.engine.batch}, buckets {self.engine.buckets})")
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, timeout_keep_alive=5)
        self._uvicorn = _DrainingServer(config, self)
        try:
            asyncio.run(self._serve())
        finally:
            self.scheduler.stop(timeout=self.options.drain_timeout_s)
            self._socket.close()
        if self.scheduler.failed is not None:  # as it was raised in the device thread
            raise self.scheduler.failed

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._uvicorn.serve(sockets=[self._socket])

    def start(self) -> "Server":
        """Serves from a background thread; returns once listening (`url` is set)."""
        self._thread = threading.Thread(target=self.run, name="led-flax-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Drains, then waits for the background thread of `start` to end."""
        self.drain("stop()")
        if self._thread is not None:
            self._thread.join(timeout)
