"""Atomic file and directory writes: a half-written file or folder never replaces a good one.

Every writer of the library and of the training job goes through these two functions. A file is
written to a temporary name in its own folder and renamed over the target when complete; a directory
is built under a hidden temporary name beside its target and swapped in only when complete. Temporary
names carry the writer's process id, so `stale_temporaries` can tell the leftovers of a killed writer
from the work of one still running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterable, Iterator

TMP_TAG = ".tmp-"


def write_atomic(path: str | os.PathLike, data: str | bytes | Iterable[str]) -> str:
    """Writes `data` to `path` through a temporary file in the same folder and one rename.

    data: text, bytes, or lines (each written with a trailing newline). Returns the path. Raises
    OSError (a missing folder, a full or read-only filesystem) with the target left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TMP_TAG}{os.getpid()}-", dir=folder)
    try:
        if isinstance(data, bytes):
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data if isinstance(data, str) else "".join(line + "\n" for line in data))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yields a fresh temporary directory beside `directory`; when the block ends without an error
    it replaces `directory` (only with `overwrite`), else it is removed.

    Raises FileExistsError before any work if `directory` exists and `overwrite` is False.
    """
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True (--overwrite) to replace it")
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(directory):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
