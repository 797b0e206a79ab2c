"""A batch's rows as `summarize` builds them, shared with the server so that both give the same ids:
a document's tokens cut to the encoder's positions, padded to its bucket, global attention on the
first token; and the generated ids decoded to summary text.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence


class BatchInputs(NamedTuple):
    input_ids: Any  # [b, bucket] int32
    attention_mask: Any  # [b, bucket] int32
    global_attention_mask: Any  # [b, bucket] int32: the first token of each row


def truncated(ids: Sequence[int], limit: int) -> list[int]:
    """A document's ids cut to `limit` tokens, keeping its last (the eos token); as they are when they fit."""
    ids = list(ids)
    return ids if len(ids) <= limit else ids[:limit - 1] + ids[-1:]


def padded_batch(tokenizer, rows: Sequence[Sequence[int]], bucket: int) -> BatchInputs:
    """Rows of ids (each at most `bucket` long, `truncated` first) padded to exactly `bucket` tokens."""
    enc = tokenizer.pad(rows, max_length=bucket, pad_to_multiple_of=bucket)
    return BatchInputs(enc["input_ids"], enc["attention_mask"], enc["global_attention_mask"])


def summary_texts(tokenizer, sequences) -> list[str]:
    """Generated ids [b, length] -> each row's text, special tokens dropped, whitespace at the ends cut."""
    return [text.strip() for text in tokenizer.batch_decode(sequences)]
