"""Orbax's leftovers kept off the console.

When a read fails, the reads it left in flight finish after orbax closed its event loop, and each
would print a traceback after (or while) our one-line error is reported. When a write fails (a full
disk), orbax's background threads log the failure with its traceback before the caller sees it
raised. The hooks here drop exactly those errors and pass everything else on; `checkpoint` and the
training job's checkpoints install them before they read or write, and `orbax_write` turns a write
that failed for a reason the user can fix into one `WriteError` line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading

from led_flax.utils.files import FIXES, WriteError

# tensorstore names the OS error a write failed with in its message ("... [os_error_code='28']"),
# Python in its OSError's ("[Errno 28] No space left on device"), which orbax's threads re-raise
_OS_ERROR = re.compile(r"os_error_code='(\d+)'|\[Errno (\d+)\]")


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


def os_error_code(e: BaseException | None) -> int | None:
    """The errno an orbax or tensorstore write failed with, read from the messages of `e` and its
    causes (tensorstore raises ValueErrors that name it); None when none does."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        m = _OS_ERROR.search(str(e))
        if m:
            return int(m.group(1) or m.group(2))
        e = e.__cause__ or e.__context__
    return None


class _DropFixableWriteErrors(logging.Filter):
    """orbax's background threads log a write that failed with a fixable OS error (a full disk) with
    its traceback; the caller raises it as one WriteError line instead."""

    def filter(self, record) -> bool:
        code = os_error_code(record.exc_info[1]) if record.exc_info and record.exc_info[1] is not None else None
        if code is None:
            m = _OS_ERROR.search(record.getMessage())
            code = int(m.group(1) or m.group(2)) if m else None
        return code not in FIXES


_DROP_FIXABLE_WRITE_ERRORS = _DropFixableWriteErrors()


@contextlib.contextmanager
def orbax_write(path: str | os.PathLike):
    """Around an orbax write to `path` (or the wait for an asynchronous one): orbax's logs and
    leftovers of a failed write stay off the console, and a write that failed for a reason the user
    can fix (a full or read-only disk, a quota) is raised as a WriteError naming `path` and the fix.
    Other errors pass as they are."""
    quiet_closed_loop_errors()
    # absl: orbax's threads; asyncio: a failed chunk's future that nobody awaited once the first
    # failure was raised ("Future exception was never retrieved", logged when it is collected)
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if _DROP_FIXABLE_WRITE_ERRORS not in logger.filters:
            logger.addFilter(_DROP_FIXABLE_WRITE_ERRORS)
    try:
        yield
    except Exception as e:
        code = os_error_code(e)
        if code not in FIXES:
            raise
        raise WriteError(code, os.strerror(code), os.fspath(path)) from None
