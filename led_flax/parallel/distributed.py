"""One job over several processes (hosts): the `--distributed` and `--coordinator` options that
`led-flax train` and `led-flax summarize` share, checked before any work, and `jax.distributed`
started from them.

CPU processes form one job through the gloo collectives (GPU and TPU ignore that setting); the
coordinator is one process's HOST:PORT, or, with `--distributed`, found by JAX itself (TPU pods,
SLURM).
"""

from __future__ import annotations

import dataclasses


class DistributedError(ValueError):
    """Multi-process options that do not fit together; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """How this process joins a job: `coordinator` HOST:PORT with `num_processes` and `process_id`, or
    `distributed` (JAX finds them), or neither (one process). Timeouts in seconds: how long to wait
    for every process to join, and how long a silent peer may stay silent before the job is failed."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distributed: bool = False
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100

    @property
    def multi_process(self) -> bool:
        return bool(self.coordinator or self.distributed)

    def check(self) -> None:
        """Raises DistributedError naming the fix, before any work."""
        if self.coordinator is None:
            given = [name for name, v in (("--num-processes", self.num_processes), ("--process-id", self.process_id))
                     if v is not None]
            if given:
                raise DistributedError(f"{' and '.join(given)} need --coordinator HOST:PORT")
        else:
            if self.distributed:
                raise DistributedError("give --coordinator or --distributed, not both")
            if self.num_processes is None or self.process_id is None:
                raise DistributedError("--coordinator needs --num-processes N and --process-id I")
            if self.num_processes < 1:
                raise DistributedError(f"--num-processes must be at least 1, got {self.num_processes}")
            if not 0 <= self.process_id < self.num_processes:
                raise DistributedError(f"--process-id must be 0 to {self.num_processes - 1} (--num-processes "
                                       f"{self.num_processes}), got {self.process_id}")
            host, _, port = self.coordinator.rpartition(":")
            if not host or not port.isdigit():
                raise DistributedError(f"--coordinator {self.coordinator!r} is not HOST:PORT, such as 10.0.0.1:1234")
        for name in ("initialization_timeout_s", "heartbeat_timeout_s"):
            if getattr(self, name) < 1:
                raise DistributedError(f"{name} must be at least 1 second, got {getattr(self, name)}")

    def initialize(self) -> None:
        """Joins the job (`jax.distributed.initialize`); nothing for one process. Call before any
        device use."""
        if not self.multi_process:
            return
        import jax
        # CPU processes need a collectives library to form one job (GPU and TPU ignore this setting)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        timeouts = dict(initialization_timeout=self.initialization_timeout_s,
                        heartbeat_timeout_seconds=self.heartbeat_timeout_s)
        try:
            if self.coordinator:
                jax.distributed.initialize(self.coordinator, self.num_processes, self.process_id, **timeouts)
            else:
                jax.distributed.initialize(**timeouts)
        except (RuntimeError, ValueError) as e:  # jaxlib's XlaRuntimeError is a RuntimeError
            where = f"the coordinator {self.coordinator}" if self.coordinator else "the job"
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise DistributedError(f"could not join {where} within {self.initialization_timeout_s} s ({reason}); "
                                   f"start every process of the job, check --coordinator, or raise "
                                   f"--initialization-timeout-s") from None


def job_options(args) -> JobOptions:
    """The JobOptions of a parsed command line (its --coordinator, --num-processes, --process-id and
    --distributed, and the timeouts where the command has them)."""
    extra = {k: getattr(args, k) for k in ("initialization_timeout_s", "heartbeat_timeout_s")
             if getattr(args, k, None) is not None}
    return JobOptions(coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
                      distributed=args.distributed, **extra)


__all__ = ["DistributedError", "JobOptions", "job_options"]
