"""Which process summarizes which document, when one corpus runs over a job's processes.

The cost model, in encoder-token equivalents. A document in bucket `b` (its padded input length)
costs
    b                                   the encoder: banded attention and the feed-forward are linear
                                        in the padded tokens;
  + decode_steps * num_beams * step     the decoding loop: max_length steps for each beam, each step
                                        about `step` encoder tokens' work (DECODE_STEP: reading the
                                        decoder's weights and the cross-attention keys once per step);
and a process pays whole batches: its documents of one bucket cost ceil(count / batch) * batch times
the per-document cost, the last batch padded with copies.

The plan deals the documents, sorted by bucket (longest first) then by index, to the processes in
snake order (0, 1, ..., P-1, P-1, ..., 1, 0, 0, 1, ...): every process gets the same number of each
bucket's documents, give or take one, so the same mix of short and long work and the same batch
padding. `costs` gives the planned cost of each process, to compare the busiest with the mean.
"""

from __future__ import annotations

import math
from typing import Sequence

DECODE_STEP = 64  # one decoding step of one beam, in encoder tokens of work (see the module docstring)


def document_cost(bucket: int, decode_steps: int, num_beams: int) -> float:
    """The planned cost of one document of `bucket` padded tokens (the module docstring's model)."""
    return bucket + decode_steps * num_beams * DECODE_STEP


def assign(buckets: Sequence[int], processes: int) -> list[int]:
    """The process (0 to processes - 1) of each document, given each document's bucket: the documents
    sorted by bucket, longest first, then by index, dealt in snake order. Every document goes to one
    process; a process may get none when there are fewer documents than processes."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    order = sorted(range(len(buckets)), key=lambda i: (-buckets[i], i))
    out = [0] * len(buckets)
    for k, i in enumerate(order):
        lap, pos = divmod(k, processes)
        out[i] = pos if lap % 2 == 0 else processes - 1 - pos
    return out


def costs(buckets: Sequence[int], owners: Sequence[int], processes: int, batch: int, decode_steps: int,
          num_beams: int) -> list[float]:
    """The planned cost of each process: its whole batches of each bucket (the module docstring)."""
    counts: dict[tuple[int, int], int] = {}
    for b, p in zip(buckets, owners):
        counts[(p, b)] = counts.get((p, b), 0) + 1
    out = [0.0] * processes
    for (p, b), n in counts.items():
        out[p] += math.ceil(n / batch) * batch * document_cost(b, decode_steps, num_beams)
    return out


__all__ = ["DECODE_STEP", "document_cost", "assign", "costs"]
