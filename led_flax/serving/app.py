"""The HTTP layer, a Starlette app: parses and checks a request, hands its documents to the scheduler,
and answers in JSON. It owns no queue and touches no device.

    POST /summarize   {"inputs": ..., "parameters": {...}} -> [{"summary_text": ..., "input_tokens": n,
                      "generated_tokens": m[, "seed": s]}, ...], one per input, in input order
    GET  /health      200 {"status": "ok"}; 503 while warming up or draining
    GET  /metrics     Prometheus text

Errors are {"error": message, "type": kind} with the status that fits (`RequestError`): 400 bad
JSON, types, parameters or an empty list; 401 a missing or wrong API key; 413 a body over the limit
or an over-long input with truncation false; 429 a full queue; 503 draining or warming up (both
with Retry-After); 504 past the timeout; 500 a bug, and nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .engine import Engine
from .metrics import Metrics
from .options import ServeOptions
from .requests import RequestError, parse
from .scheduler import QueueFull, Scheduler

log = logging.getLogger("led_flax.serving")
CLIENT_GONE = 499  # nginx's status for a client that closed its connection before the answer


@dataclasses.dataclass
class ServerState:
    """What the app and the process's shutdown share: whether the server is draining, and the
    summarize requests not yet answered."""

    draining: bool = False
    in_flight: int = 0


def _check_key(request: Request, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    if given is None:
        raise RequestError(401, "unauthorized", "this server needs an API key: send 'Authorization: Bearer KEY'",
                           {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8")):
        raise RequestError(401, "unauthorized", "the API key is wrong", {"WWW-Authenticate": "Bearer"})


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (its Content-Length first)."""
    too_big = RequestError(413, "payload_too_large", f"the body is over the server's limit of {limit / 1e6:g} MB; "
                                                     f"send fewer or shorter documents per request")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_app(engine: Engine, scheduler: Scheduler, metrics: Metrics, options: ServeOptions,
              state: ServerState) -> Starlette:
    async def summarize(request: Request) -> Response:
        start = time.monotonic()
        state.in_flight += 1
        headers: dict[str, str] = {}
        try:
            status, body = 200, await _summarize(request, start)
        except RequestError as e:
            status, body, headers = e.status, e.body(), e.headers
            metrics.errors.labels(e.kind).inc()
        except _ClientGone:
            status, body = CLIENT_GONE, {"error": "the client closed its connection", "type": "client_gone"}
            metrics.errors.labels("client_gone").inc()
        except asyncio.CancelledError:  # a second signal stops the server at once: no answer will come
            status, body = 503, {"error": "the server was stopped before this request was answered; retry on "
                                          "another replica", "type": "stopped"}
            headers = {"Retry-After": "5"}
            metrics.errors.labels("stopped").inc()
        except Exception as e:  # a bug: logged with its traceback, answered 500, the server goes on
            log.exception("a summarize request failed")
            status, body = 500, {"error": f"internal error ({type(e).__name__}); the server log has the traceback",
                                 "type": "internal"}
            metrics.errors.labels("internal").inc()
        finally:
            state.in_flight -= 1
        metrics.requests.labels(str(status)).inc()
        metrics.request_seconds.observe(time.monotonic() - start)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _summarize(request: Request, start: float) -> list[dict]:
        if state.draining:
            raise RequestError(503, "draining", "the server is shutting down; send the request to another "
                                                "replica, or retry later", {"Retry-After": "5"})
        if not scheduler.ready.is_set():
            raise RequestError(503, "warming_up", "the server is still compiling its programs; retry shortly",
                               {"Retry-After": "2"})
        _check_key(request, options.api_key)
        req = parse(await _body(request, options.max_body_bytes), max_inputs=options.max_queue,
                    max_num_beams=options.max_num_beams)
        prepared = await anyio.to_thread.run_sync(engine.prepare, req)
        rows = [r for r in prepared.rows if r is not None]
        try:
            futures = scheduler.submit(rows)
        except QueueFull as e:
            raise RequestError(429, "queue_full", f"{e}; retry later", {"Retry-After": "1"}) from None
        waiting = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        gone = asyncio.ensure_future(_disconnected(request))
        remaining = options.timeout_s - (time.monotonic() - start)
        try:
            done, _ = await asyncio.wait({waiting, gone}, timeout=max(remaining, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            scheduler.cancel(futures)
            gone.cancel()
            raise
        if waiting not in done:
            scheduler.cancel(futures)
            waiting.cancel()
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: nothing logged
            gone.cancel()
            if gone in done:
                raise _ClientGone()
            raise RequestError(504, "timeout", f"no answer within the server's {options.timeout_s:g} s; send fewer "
                                               f"or shorter documents, or retry later")
        gone.cancel()
        results = iter(waiting.result())
        answer = []
        for j, row in enumerate(prepared.rows):
            item = next(results) if row is not None else None
            entry = {"summary_text": item.summary_text if item else "",
                     "input_tokens": prepared.input_tokens[j], "generated_tokens": item.generated_tokens if item else 0}
            if prepared.seeds is not None:
                entry["seed"] = prepared.seeds[j]
            answer.append(entry)
        metrics.documents.inc(len(answer))
        return answer

    async def health(request: Request) -> Response:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
        if not scheduler.ready.is_set() or scheduler.failed is not None:
            return JSONResponse({"status": "warming_up"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ok", "warm_up_programs": scheduler.warm_up_programs})

    async def metrics_text(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": f"{exc.detail}: the endpoints are POST /summarize, GET /health and GET "
                                      f"/metrics", "type": kind}, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(routes=[Route("/summarize", summarize, methods=["POST"]), Route("/health", health),
                            Route("/metrics", metrics_text)],
                    exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False  # /summarize/ is a JSON 404, not a redirect with an empty body
    return app


class _ClientGone(Exception):
    pass
