"""The multi-process plan's balance on a real corpus, computed, not timed: the 250 ACLSum papers with a
led-base-shaped model (16,384 positions, window 1,024: buckets 1,024 to 16,384), for 2, 4 and 16
processes, the planned cost of the busiest process (its whole batches, padding included) over the
mean (every document's cost over the processes, no padding: what a perfect split would pay), by
`led_flax.summarization.plan`'s cost model, against a split by count (contiguous slices of the input,
as a hand split by `shard_id` gives).

The token counts come from a byte-level BPE of 50,265 entries trained on the papers themselves (no
hub: the released tokenizer is not on this machine), so lengths are close to, not equal to, the
released tokenizer's.

    python bench/plan.py [--batch-sizes 4 1] [--beams 4] [--max-length 256]
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 1])
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    from led_flax import LEDConfig
    from led_flax.model.config import RELEASED
    from led_flax.summarization import bucket_for, default_buckets, plan
    from led_flax.train.config import DataConfig
    from led_flax.train.data import load_examples, train_tokenizer

    texts = [e.document for split in ("train", "validation", "test") for e in load_examples(DataConfig(), split)]
    with tempfile.TemporaryDirectory() as work:
        tokenizer = train_tokenizer(texts, f"{work}/tokenizer", vocab_size=50265)
        lengths = [len(ids) for ids in tokenizer.encode_batch(texts)]
    config = LEDConfig(**RELEASED["allenai/led-base-16384"])
    buckets_list = default_buckets(config)
    buckets = [bucket_for(min(n, config.max_encoder_position_embeddings), buckets_list) for n in lengths]
    print(f"{len(texts)} papers; tokens min {min(lengths)}, median {sorted(lengths)[len(lengths) // 2]}, "
          f"max {max(lengths)}; per bucket {{{', '.join(f'{b}: {buckets.count(b)}' for b in buckets_list)}}}")
    print("| batch | processes | busiest / mean, plan | busiest / mean, split by count | documents per process "
          "(plan) |")
    print("|---:|---:|---:|---:|---|")
    for batch in args.batch_sizes:
        for processes in (2, 4, 16):
            owners = plan.assign(buckets, processes, batch, args.max_length, args.beams)
            by_count = [i * processes // len(buckets) for i in range(len(buckets))]
            # the mean: every document's cost over the processes, no padding (what a perfect split pays)
            mean = sum(plan.document_cost(b, args.max_length, args.beams) for b in buckets) / processes
            ratios = [max(plan.costs(buckets, assignment, processes, batch, args.max_length, args.beams)) / mean
                      for assignment in (owners, by_count)]
            counts = [owners.count(p) for p in range(processes)]
            print(f"| {batch} | {processes} | {ratios[0]:.3f} | {ratios[1]:.3f} | {min(counts)} to {max(counts)} |")


if __name__ == "__main__":
    main()
