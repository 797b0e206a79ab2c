"""Atomic file and directory writes: a half-written file or folder never replaces a good one.

Every writer of the library and of the training job goes through these two functions. A file is
written to a temporary name in its own folder and renamed over the target when complete; a directory
is built under a hidden temporary name beside its target and swapped in only when complete.

Temporary names carry the writer's process id and host, `.NAME.tmp-PID@HOST@XXXX` (and, during a
directory swap, `.NAME.old-PID@HOST@XXXX` for the version being replaced), so `stale_temporaries`
can tell the leftovers of a killed writer from the work of one still running. Each writer removes
the stale temporaries of its own target before it starts; those of another host, whose processes
this one cannot see, are only reported.

A target that is a symbolic link is written through: its target is replaced, atomically, in the
target's own folder, and the link stays (as `cp` and editors do: people point outputs at a shared
disk on purpose). A finished file gets the mode the umask gives (0644 under 022), as any other tool's
would, not the temporary file's 0600.

A write that fails for a reason the user can fix (a full or read-only filesystem, no permission)
raises `WriteError`, an OSError whose message names the path and the fix.
"""

from __future__ import annotations

import contextlib
import json
import dataclasses
import errno
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
import warnings
from typing import Iterable, Iterator

log = logging.getLogger("led_flax.utils.files")

TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"

# errors of the environment that the user can fix, and how
FIXES = {
    errno.ENOSPC: "free some space on that filesystem, or write somewhere else",
    errno.EDQUOT: "your disk quota is used up: free some space, or write somewhere else",
    errno.EROFS: "the filesystem is read-only: write somewhere else",
    errno.EACCES: "no permission: write somewhere else, or change the folder's permissions",
    errno.EPERM: "no permission: write somewhere else, or change the folder's permissions",
    errno.EFBIG: "the file is larger than the filesystem allows: write somewhere else",
}


class WriteError(OSError):
    """An output that could not be written for a reason the user can fix (a full or read-only
    filesystem, no permission); `str()` names the path and the fix, then `then` (what to do next,
    "rerun the same command to resume", say) when set. `errno` and `filename` are the cause's errno
    and the path."""

    then: str = ""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}; {FIXES.get(self.errno, 'check the path')}" + \
            (f"; {self.then}" if self.then else "")


def as_write_error(e: OSError, path: str | os.PathLike, then: str = "") -> OSError:
    """`e` as a WriteError naming `path` when it is an error the user can fix, else `e` itself."""
    if isinstance(e, WriteError) or e.errno not in FIXES:
        return e
    error = WriteError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path))
    error.then = then
    return error


@contextlib.contextmanager
def writing(path: str | os.PathLike, then: str = "") -> Iterator[None]:
    """Turns the fixable OSErrors raised inside the block into a WriteError naming `path` (and
    `then`, what to do next)."""
    try:
        yield
    except OSError as e:
        error = as_write_error(e, path, then)
        if error is e:
            raise
        raise error from e


# ---------------------------------------------------------------------------------------------- temporaries
@dataclasses.dataclass(frozen=True)
class Temporary:
    """A temporary file or directory a writer left beside its target.

    path: where it is. kind: "tmp" (a new version being written) or "old" (the version a directory
    swap was replacing). pid, host: the writer's process id and host name.
    """

    path: str
    kind: str
    pid: int
    host: str

    @property
    def stale(self) -> bool:
        """Whether its writer is gone: a process of this host that no longer runs. A temporary of
        another host is never called stale: this host cannot see that host's processes."""
        if self.host != HOST:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # a live process of another user
            return False
        return False


def _temp_prefix(name: str, tag: str) -> str:
    return f".{name}{tag}{os.getpid()}@{HOST}@"


def stale_temporaries(target: str | os.PathLike) -> list[Temporary]:
    """The temporaries of `target` that writers left in its folder, stale or not (see `Temporary`).
    Names without a host (written before hosts were recorded) count as this host's."""
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)(?:@([^@]*)@|-).+$")
    found = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.listdir(parent)):
            m = pattern.match(entry)
            if m:
                found.append(Temporary(os.path.join(parent, entry), m.group(1), int(m.group(2)), m.group(3) or HOST))
    return found


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class StaleTemporaryWarning(UserWarning):
    """A temporary left by a killed writer that was not removed: it may hold the only copy of the
    target (a swap interrupted between its two renames), or it belongs to another host."""


def clean_stale_temporaries(target: str | os.PathLike) -> list[str]:
    """Removes what killed writers of `target` left behind; returns the paths removed.

    A stale `.old` version is kept, with a StaleTemporaryWarning naming it, when `target` itself is
    missing (the writer was killed between the swap's two renames: it may be the only copy).
    Temporaries of another host are kept, with a warning naming them and the host.
    """
    target = os.path.abspath(os.fspath(target))
    removed = []
    for t in stale_temporaries(target):
        if t.host != HOST:
            warnings.warn(f"{t.path} was left by a writer on host {t.host}; remove it once no job on {t.host} "
                          f"writes {target}", StaleTemporaryWarning, stacklevel=3)
        elif not t.stale:
            continue
        elif t.kind == "old" and not os.path.exists(target):
            warnings.warn(f"{target} is missing and {t.path} holds its previous version (a writer was killed "
                          f"while replacing it): rename it back to {target}, or remove it", StaleTemporaryWarning,
                          stacklevel=3)
        else:
            _remove(t.path)
            removed.append(t.path)
    if removed:
        log.info("removed %d temporaries of %s left by killed writers: %s", len(removed), target, removed)
    return removed


# ---------------------------------------------------------------------------------------------- writers
def _umask_mode(mode: int) -> int:
    """`mode` less the process's umask: what open() or mkdir() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_target(path: str | os.PathLike) -> str:
    """Where a write to `path` lands: `path` itself, or, through symbolic links, the file they point
    at (absolute)."""
    return os.path.realpath(os.fspath(path))


def write_atomic(path: str | os.PathLike, data: str | bytes | Iterable[str]) -> str:
    """Writes `data` to `path` through a temporary file in the same folder and one rename; a symbolic
    link is written through to its target (the link stays). The file gets the mode the umask gives.

    data: text, bytes, or lines (each written with a trailing newline). Returns the path. Raises
    WriteError (a full or read-only filesystem, no permission) or another OSError (a missing folder,
    `path` a directory) with the target left as it was.
    """
    path = os.fspath(path)
    target = write_target(path)
    folder = os.path.dirname(target)
    with writing(path):
        clean_stale_temporaries(target)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(os.path.basename(target), TMP_TAG), dir=folder)
        try:
            os.fchmod(fd, _umask_mode(0o666))  # mkstemp's 0600 would otherwise survive the rename
            if isinstance(data, bytes):
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data if isinstance(data, str) else "".join(line + "\n" for line in data))
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return path


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory beside `directory`; when the block ends without an error
    it replaces `directory` (only with `overwrite`), else it is removed. A `directory` that is a
    symbolic link is written through: the folder it points at is replaced, beside itself, and the link
    stays.

    Raises FileExistsError before any work if `directory` exists and `overwrite` is False, and
    WriteError when the filesystem is full or read-only (the block's own fixable OSErrors too).
    """
    given = os.path.abspath(os.fspath(directory))
    directory = write_target(directory)
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{given} already exists; pass overwrite=True (--overwrite) to replace it")
    parent, name = os.path.split(directory)
    with writing(given):
        os.makedirs(parent, exist_ok=True)
        clean_stale_temporaries(directory)
        tmp = os.path.join(parent, f"{_temp_prefix(name, TMP_TAG)}{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            yield tmp
            if os.path.exists(directory):
                old = os.path.join(parent, f"{_temp_prefix(name, OLD_TAG)}{uuid.uuid4().hex[:8]}")
                os.rename(directory, old)
                os.rename(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, directory)
        finally:
            if os.path.lexists(tmp):
                remove_when_quiet(tmp)


def remove_when_quiet(path: str, *, quiet_s: float = 0.3, limit_s: float = 5.0) -> None:
    """Removes the folder `path` of a failed write and keeps it removed until nothing has written there
    for `quiet_s` seconds (or `limit_s` passed). A write that failed part-way can leave writers in
    flight that orbax does not wait for: tensorstore's threads finish their other chunks after the
    first one failed, and on a full disk they succeed once the removal has freed space, putting the
    folder back (seen: one data file of a failed checkpoint reappearing after the cleanup)."""
    import time

    deadline = time.monotonic() + limit_s
    quiet_since = None
    while time.monotonic() < deadline:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


class OutputBusyError(ValueError):
    """An output that another running process is writing; the message names it, the process and the
    fix."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Holds an OS lock on `path`'s output for the block (`fcntl.flock` on `.NAME.lock` beside the
    file it lands in, which holds the holder's process id and host, and is removed at the end). Two
    runs writing one output at once would interleave their progress and overwrite each other's
    results; the second is refused. The kernel drops the lock of a killed holder, so a stale lock
    file never blocks a rerun.

    Raises OutputBusyError naming the holder when another process holds it."""
    import fcntl

    target = write_target(path)
    lock_path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")
    with writing(path):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _umask_mode(0o666))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise OutputBusyError(f"{os.fspath(path)} is being written by another run (process {holder}); wait for "
                                  f"it to finish, or write somewhere else") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {HOST}".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.remove(lock_path)  # still holding the lock: no other run can be between its open and flock
    finally:
        os.close(fd)


def describe_json(value) -> str:
    """What kind of JSON value `value` is, for messages: "null", "a number", "a list", ..."""
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
             dict: "an object", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


def jsonl_objects(path: str, error: type[Exception], example: str, limit: int | None = None) -> list[tuple[int, dict]]:
    """The (line number, object) of each non-blank line of a jsonl file, the first `limit` of them.

    Raises `error` naming the file, the line and the fix for a line that is not UTF-8, not JSON or not
    a JSON object (`example`: what an object should look like, for the message), and for a file that
    cannot be read."""
    records = []
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if n == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark: read as utf-8-sig
                if not raw.strip():
                    continue
                if limit and len(records) >= limit:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise error(f"{path} line {n} is not UTF-8 ({e.reason} at byte {e.start} of the line); convert "
                                f"the file to UTF-8 (iconv -t UTF-8)") from None
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{path} line {n} is not JSON ({e.msg}, column {e.colno}); write one JSON object a "
                                f"line, or remove the line") from None
                if not isinstance(record, dict):
                    raise error(f"{path} line {n} is {describe_json(record)}, not a JSON object; write one object a "
                                f"line, such as {example}")
                records.append((n, record))
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}; {read_fix(e, 'name a jsonl file')}") from None
    return records


def read_fix(e: OSError, for_a_directory: str = "name a file") -> str:
    """The fix to print after "cannot read PATH: REASON" for the OSError `e`."""
    if isinstance(e, IsADirectoryError):
        return for_a_directory
    if isinstance(e, FileNotFoundError):
        return "check the path"
    if isinstance(e, PermissionError):
        return "check the file's permissions"
    return "check the file"
