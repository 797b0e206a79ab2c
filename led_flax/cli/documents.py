"""The documents `led-flax summarize` reads: text files, the field of each jsonl record, or stdin, each
with a name for messages and the jsonl output. A file that cannot be read is a `UsageError` naming
it and the fix."""

from __future__ import annotations

import dataclasses
import sys
import warnings

from led_flax.summarization import InputWarning
from led_flax.utils.files import describe_json, jsonl_objects, read_fix

from .usage import UsageError


@dataclasses.dataclass(frozen=True)
class Documents:
    """What `summarize` reads: each document's name (for messages and the jsonl output) and text;
    `skipped`: the names of documents that could not be read, already reported (their text is "")."""

    names: list[str]
    texts: list[str]
    skipped: frozenset[str] = frozenset()


def _decode(data: bytes, source: str, fix: str) -> str:
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark (Windows editors write one) is not text
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError(f"{source} line {line} is not UTF-8 ({e.reason} at byte {e.start} of the file); {fix}") from None


def read_jsonl(path: str, field: str) -> Documents:
    """One document per line of a jsonl file: the string `field` of each JSON object; the name is
    the record's own `id` when it has one (a string or a number), else PATH:LINE.
    Raises UsageError naming the file, the line and the fix."""
    names, texts, first, warned = [], [], {}, set()
    for n, record in jsonl_objects(path, UsageError, f'{{"{field}": "..."}}'):
        if field not in record:
            raise UsageError(f"{path} line {n} has no field {field!r} (it has {sorted(record)[:8]}); name the text "
                             f"field with --field")
        if not isinstance(record[field], str):
            raise UsageError(f"{path} line {n}: field {field!r} is {describe_json(record[field])}, not a string; "
                             f"name the text field with --field, or fix the line")
        rid = record.get("id")
        own = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None
        if own is not None and own in first and own not in warned:  # once per id
            warnings.warn(f"{path}: id {rid!r} is on line {first[own]} and line {n} (and maybe more): their output "
                          f"records cannot be told apart; give each record its own id", InputWarning)
            warned.add(own)
        if own is not None:
            first.setdefault(own, n)
        names.append(own if own is not None else f"{path}:{n}")
        texts.append(record[field])
    return Documents(names, texts)


def read_files(paths) -> Documents:
    """One document per text file, read as UTF-8 (a leading byte-order mark dropped); a file that is
    not UTF-8 is skipped (an empty document, named in `Documents.skipped`) with an InputWarning.
    Raises UsageError for a file that is missing or cannot be read."""
    names, texts, skipped = [], [], set()
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}; "
                             f"{read_fix(e, 'name the text files in it, or pass --jsonl FILE')}") from None
        try:
            texts.append(data.decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            warnings.warn(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); skipped: convert it with "
                          f"iconv -t UTF-8", InputWarning)
            texts.append("")
            skipped.add(path)
        names.append(path)
    return Documents(names, texts, frozenset(skipped))


def read_stdin(prefix: str) -> Documents:
    """One document from stdin; on a terminal, says first what it waits for."""
    if sys.stdin is None:
        raise UsageError("no documents: pass FILES or --jsonl FILE")
    if sys.stdin.isatty():
        print(f"{prefix}: reading one document from the terminal; end it with Ctrl-D (or pass FILES or "
              f"--jsonl FILE)", file=sys.stderr)
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    return Documents(["<stdin>"], [_decode(data, "<stdin>", "pipe UTF-8 text (iconv -t UTF-8)")])
