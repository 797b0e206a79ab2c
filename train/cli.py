"""`led-flax train`: the command-line face of the training job. `led_flax.cli` declares its options
and calls `main` only when the command runs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from led_flax.parallel.distributed import job_options

# XLA:CPU settings for a training step (GPU and TPU ignore them), each measured with bench/train.py:
# - the concurrency-optimized scheduler keeps more buffers alive to run independent ops side by side;
#   for a training step it loses: a 4,096-token led-base step takes 18.1 s and 7.0 GiB with it off,
#   19.1 s and 7.8 GiB with it on;
# - YNNPACK's reduction fusions sum over a non-minor axis (the LayerNorm parameters' gradients, a
#   column sum over every token) about 30x slower than XLA's own loops (41 ms against 1.3 ms for
#   [4,096, 768]) and the softmax gradient's row sums over 4,096 keys 8x slower; without them the
#   4,096-token step takes 16.7 s against 17.7 s. Its dot fusions stay on. The encoder alone (no
#   gradient) gains nothing from it, so inference keeps XLA's default.
XLA_CPU_FLAGS = {"xla_cpu_enable_concurrency_optimized_scheduler": "false",
                 "xla_cpu_experimental_ynn_fusion_type": "-reduce"}


def configure_xla() -> None:
    """Adds XLA_CPU_FLAGS to XLA_FLAGS, each unless XLA_FLAGS already sets it (read when JAX creates
    its backend: call before any device use)."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"--{name}={value}" for name, value in XLA_CPU_FLAGS.items() if name not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def main(args) -> int:
    """Runs `led-flax train`. Raises TrainConfigError (and other ValueErrors) for a config or an option
    to fix, TrainingError (exit status 3) when the loss goes NaN."""
    job = job_options(args)
    job.check()
    configure_xla()
    with _console_logging():
        return _main(args, job)


@contextlib.contextmanager
def _console_logging():
    """led_flax's log on stderr with times, INFO and up, for the command's duration (the logger is
    put back as it was: `main` may run in-process, more than once)."""
    logger = logging.getLogger("led_flax")
    saved = logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _main(args, job) -> int:
    from . import config as config_lib
    cfg = config_lib.load(args.config, args.overrides)
    if args.compile and not args.dry_run:
        raise config_lib.TrainConfigError("--compile goes with --dry-run: it compiles the step to report its memory")
    if args.dry_run:
        from led_flax.parallel.sharding import ShardingError

        from .dry_run import dry_run
        try:
            print(dry_run(cfg, compile=args.compile))
        except ShardingError as e:
            raise ShardingError(f"{e}. To plan for more devices than this machine has, fake them: "
                                f"XLA_FLAGS=--xla_force_host_platform_device_count=N led-flax train ... --dry-run") \
                from None
        return 0
    job.initialize()
    from .loop import run
    last = run(cfg, progress=not args.quiet)
    import jax
    if jax.process_index():
        return 0
    if last:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    print(f"wrote {os.path.join(cfg.output_dir, 'final')} (led-flax summarize --model) and "
          f"{os.path.join(cfg.output_dir, 'hf')} (transformers)")
    return 0
