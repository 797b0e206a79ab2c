"""`led-flax train`: the command-line face of the training job (registered by `led_flax.cli`)."""

from __future__ import annotations

import logging
import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "tiny-aclsum.yaml")


# XLA:CPU's concurrency-optimized scheduler keeps more buffers alive to run independent ops side by side;
# for a training step it loses: a 4,096-token led-base step takes 18.1 s and 7.0 GiB with it off,
# 19.1 s and 7.8 GiB with it on (bench/train.py). GPU and TPU ignore the flag.
XLA_CPU_FLAGS = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure_xla() -> None:
    """Adds XLA_CPU_FLAGS to XLA_FLAGS (read when JAX creates its backend: call before any device use)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + XLA_CPU_FLAGS).strip()


def add_arguments(p) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="a YAML config (default: configs/tiny-aclsum.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optimizer.learning_rate=1e-4 (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the mesh and the sharded train state abstractly (eval_shape): shapes, "
                        "shardings and bytes per device, no data, no weights")
    p.add_argument("--compile", action="store_true",
                   help="with --dry-run: also compile the train step for this backend and print XLA's memory "
                        "analysis per device (minutes for a large model; no data, no weights)")
    p.add_argument("--coordinator", help="multi-process: the coordinator's host:port (jax.distributed)")
    p.add_argument("--num-processes", type=int, help="multi-process: the number of processes")
    p.add_argument("--process-id", type=int, help="multi-process: this process's index")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with no arguments (TPU pods, SLURM: auto-detected)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def initialize_distributed(args) -> None:
    import jax
    if args.coordinator or args.distributed:
        # CPU processes need a collectives library to form one job (GPU and TPU ignore this setting)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.coordinator:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        else:
            jax.distributed.initialize()


def main(args) -> int:
    configure_xla()
    from . import config as config_lib
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logger = logging.getLogger("led_flax")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    cfg = config_lib.load(args.config, args.overrides)
    if args.compile and not args.dry_run:
        raise config_lib.TrainConfigError("--compile goes with --dry-run: it compiles the step to report its memory")
    if args.dry_run:
        from led_flax.sharding import ShardingError

        from .dry_run import dry_run
        try:
            print(dry_run(cfg, compile=args.compile))
        except ShardingError as e:
            raise ShardingError(f"{e}. To plan for more devices than this machine has, fake them: "
                                f"XLA_FLAGS=--xla_force_host_platform_device_count=N led-flax train ... --dry-run") \
                from None
        return 0
    initialize_distributed(args)
    from .loop import TrainingError, run
    try:
        last = run(cfg, progress=not args.quiet)
    except TrainingError as e:
        print(f"led-flax train: stopped: {e}", file=sys.stderr)
        return 3
    import jax
    if jax.process_index():
        return 0
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
    print(f"wrote {os.path.join(cfg.output_dir, 'final')} (led-flax summarize --model) and "
          f"{os.path.join(cfg.output_dir, 'hf')} (transformers)")
    return 0
