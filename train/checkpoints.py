"""Train-state checkpoints with orbax: the last K and the best by validation loss, written
asynchronously, each with the data loader's position.

Orbax writes a step into a temporary directory and renames it only when every file (and every
process) is done, so a job killed mid-save leaves the previous checkpoints as they were; the
leftover temporary directory is removed when the next job opens the folder.
"""

from __future__ import annotations

import os

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpoints:
    def __init__(self, directory: str, keep_last: int, keep_best: int, asynchronous: bool = True):
        keep = [policies.LatestN(n=keep_last)]
        if keep_best:
            keep.append(policies.BestN(get_metric_fn=lambda m: m["val_loss"], reverse=True, n=keep_best,
                                       keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True,
            preservation_policy=policies.AnyPreservationPolicy(keep))
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, metrics: dict | None = None) -> None:
        """Starts saving `state` and the loader position as `step` (returns once arrays are copied to
        the host; the files are written in the background)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=grain.checkpoint.CheckpointSave(data_iterator)),
                          metrics=metrics, force=True)

    def restore(self, step: int, abstract_state, data_iterator):
        """The state at `step`, placed as `abstract_state`'s shardings say; moves the iterator to its
        saved position."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return out["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
