"""Orbax's leftovers kept off the console: when a read fails, the reads it left in flight finish after
orbax closed its event loop, and each would print a traceback after (or while) our one-line error
is reported. The hooks here drop exactly those errors and pass everything else on; `checkpoint`
and the training job's checkpoints install them before they read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading


def _orbax_leftover(unraisable) -> bool:
    """An error that orbax's reads, still in flight when a read failed, raise once orbax has closed
    its event loop: "Event loop is closed" from their callbacks, or the failure of a read coroutine
    that was never awaited."""
    if _closed_loop(unraisable.exc_value):
        return True
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _closed_loop(exc) -> bool:
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


class _DropClosedLoop(logging.Filter):
    def filter(self, record) -> bool:
        return not (record.exc_info and _closed_loop(record.exc_info[1]))


_DROP_CLOSED_LOOP = _DropClosedLoop()


def quiet_closed_loop_errors() -> None:
    """Called before orbax reads: when a read fails, the reads it left in flight finish after orbax
    closed its event loop, and each would print a traceback after (or while) the error is reported:
    through sys.unraisablehook, threading.excepthook, or the loggers of asyncio and concurrent.futures
    (a done-callback that fails). Each hook is chained and each filter added once, if not already in
    place; they drop exactly those errors ("Event loop is closed" RuntimeErrors, orbax's unawaited
    coroutines) and pass everything else on."""
    if not getattr(sys.unraisablehook, "drops_orbax_leftovers", False):
        previous = sys.unraisablehook

        def hook(unraisable) -> None:
            if not _orbax_leftover(unraisable):
                previous(unraisable)
        hook.drops_orbax_leftovers = True
        sys.unraisablehook = hook
    if not getattr(threading.excepthook, "drops_orbax_leftovers", False):
        previous_thread_hook = threading.excepthook

        def thread_hook(args) -> None:
            if not _closed_loop(args.exc_value):
                previous_thread_hook(args)
        thread_hook.drops_orbax_leftovers = True
        threading.excepthook = thread_hook
    for name in ("asyncio", "concurrent.futures"):
        logger = logging.getLogger(name)
        if _DROP_CLOSED_LOOP not in logger.filters:
            logger.addFilter(_DROP_CLOSED_LOOP)


@contextlib.contextmanager
def quiet_logger(name: str):
    """Only errors of the logger `name` show inside the block (orbax logs warnings through absl
    before it returns an answer or raises)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def describe_read_error(e: BaseException, limit: int = 300) -> str:
    """One line for a failed orbax or tensorstore read: the innermost cause's first line (which
    names the file and what is wrong with it), without tensorstore's spec."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).split("\n")[0].split(" [tensorstore_spec=")[0].split(". See full TensorStore details")[0]
    text = text or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."
