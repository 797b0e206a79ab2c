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

The plan weighs three deals by this model and keeps the one whose busiest process costs least:
- whole batches: each bucket's documents (longest buckets first, then by index) cut into batches,
  so that only a bucket's last batch is partial, each batch handed, costliest first, to the process
  with the least planned cost so far (longest-processing-time first);
- snake order: the documents, sorted by bucket, dealt 0, 1, ..., P-1, P-1, ..., 0, 0, 1, ..., so
  that every process gets the same number of each bucket's documents, give or take one;
- contiguous slices of the input, as a hand split by shard id gives.
`costs` gives the planned cost of each process, to compare the busiest with the mean.
"""

from __future__ import annotations

import math
from typing import Sequence

DECODE_STEP = 64  # one decoding step of one beam, in encoder tokens of work (see the module docstring)


def document_cost(bucket: int, decode_steps: int, num_beams: int) -> float:
    """The planned cost of one document of `bucket` padded tokens (the module docstring's model)."""
    return bucket + decode_steps * num_beams * DECODE_STEP


def assign(buckets: Sequence[int], processes: int, batch: int = 1, decode_steps: int = 0,
           num_beams: int = 1) -> list[int]:
    """The process (0 to processes - 1) of each document, given each document's bucket and the batch
    size every process runs (see the module docstring). Every document goes to exactly one process; a
    process may get none when there are fewer batches than processes."""
    if processes < 1 or batch < 1:
        raise ValueError(f"processes and batch must be at least 1, got {processes} and {batch}")
    by_bucket: dict[int, list[int]] = {}
    for i in sorted(range(len(buckets)), key=lambda i: (-buckets[i], i)):
        by_bucket.setdefault(buckets[i], []).append(i)
    units = [(batch * document_cost(b, decode_steps, num_beams), members[k:k + batch])
             for b, members in by_bucket.items() for k in range(0, len(members), batch)]
    load = [0.0] * processes
    whole = [0] * len(buckets)
    for cost, members in sorted(units, key=lambda u: (-u[0], u[1][0])):  # costliest first; stable
        p = min(range(processes), key=lambda q: (load[q], q))
        load[p] += cost
        for i in members:
            whole[i] = p
    snake = [0] * len(buckets)
    for k, i in enumerate(sorted(range(len(buckets)), key=lambda i: (-buckets[i], i))):
        lap, pos = divmod(k, processes)
        snake[i] = pos if lap % 2 == 0 else processes - 1 - pos
    slices = [i * processes // len(buckets) for i in range(len(buckets))]
    return min((whole, snake, slices),  # the first of equals: whole batches, then snake order
               key=lambda deal: max(costs(buckets, deal, processes, batch, decode_steps, num_beams), default=0))


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
