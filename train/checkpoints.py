"""Train-state checkpoints with orbax: the last K and the best by validation loss, written
asynchronously, each with the data loader's position.

Orbax writes a step into a temporary directory and renames it only when every file (and every
process) is done, so a job killed mid-save leaves the previous checkpoints as they were; the
leftover temporary directory is removed when the next job opens the folder.

Each step also records its parameter layout (`layout`: {"layout_version": 2, "scan_layers": ...}).
Checkpoints written before layers could scan have no such record: they hold the per-layer layout
(version 1). A checkpoint in the other layout than the run's is restored in its own layout and its
parameters and AdamW moments converted (`led_flax.model.stacking`), so older runs resume.

Before a step is restored, the shapes its parameters were saved with are compared with the run's
config: a config that does not fit is a ResumeError naming the tensors, not orbax's traceback. A
step whose files cannot be read raises UnreadableCheckpoint, so the job can fall back to an
earlier one (`train.loop`).
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from led_flax.io.orbax_logs import describe_read_error, orbax_write, quiet_closed_loop_errors, quiet_logger
from led_flax.utils.trees import flatten


class ResumeError(ValueError):
    """A run's checkpoints that this config cannot resume; the message names the fix."""


class UnreadableCheckpoint(Exception):
    """A checkpoint step whose files cannot be read (truncated or corrupt). step: which; reason: the
    reader's error, one line."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


LAYOUT_VERSION = 2
LAYOUT_ITEM = "layout"


def relayout(state: dict, config, scanned: bool) -> dict:
    """A train state with its params and every parameter-shaped tree of its optimizer state (AdamW's
    moments) in the `scanned` layout."""
    from led_flax.model.stacking import to_layout

    def params_like(x):
        return isinstance(x, dict) and ("led" in x or "encoder" in x)
    convert = lambda x: to_layout(x, config, scanned) if params_like(x) else x
    return {**state, "params": convert(state["params"]),
            "opt_state": jax.tree_util.tree_map(convert, state["opt_state"], is_leaf=params_like)}


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

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside(self, steps, folder: str) -> list[str]:
        """Moves the directories of `steps` into `folder` (out of the manager's sight, so later saves
        of those steps do not collide with them); returns where they went."""
        moved = []
        for step in steps:
            src = os.path.join(self.directory, str(step))
            if os.path.isdir(src):
                os.makedirs(folder, exist_ok=True)
                dst = os.path.join(folder, str(step))
                k = 1
                while os.path.exists(dst):
                    dst, k = os.path.join(folder, f"{step}-{k}"), k + 1
                shutil.move(src, dst)
                moved.append(dst)
        self.manager.reload()
        return moved

    def saved_param_shapes(self, step: int) -> dict[str, tuple]:
        """{"led/encoder/...": shape} of the params saved at `step`, read from its metadata alone.
        Raises UnreadableCheckpoint when that cannot be read."""
        checkpointer = ocp.StandardCheckpointer()
        try:
            with quiet_logger("absl"):  # orbax warns of the step-level metadata a manager's items lack
                metadata = checkpointer.metadata(os.path.join(self.directory, str(step), "state")).item_metadata
            params = metadata["params"] if metadata is not None else None
            if not isinstance(params, dict):
                raise ValueError("no parameter metadata")
            return {p: tuple(m.shape) for p, m in flatten(params).items()}
        except Exception as e:  # orbax's and tensorstore's many kinds
            quiet_closed_loop_errors()
            raise UnreadableCheckpoint(step, describe_read_error(e)) from None
        finally:
            checkpointer.close()

    def check_fits(self, step: int, abstract_params) -> None:
        """Raises ResumeError listing the tensors whose saved shapes differ from `abstract_params`'
        (the run's parameters, in the layout the step was saved in), UnreadableCheckpoint when the
        step's metadata cannot be read."""
        saved = self.saved_param_shapes(step)
        expected = {p: tuple(x.shape) for p, x in flatten(abstract_params).items()}
        wrong = [f"{p}: saved {saved[p]}, this config {expected[p]}" for p in sorted(set(saved) & set(expected))
                 if saved[p] != expected[p]]
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        problems = [f"shapes that differ: {'; '.join(wrong[:4])}" + (f" and {len(wrong) - 4} more" if len(wrong) > 4
                                                                     else "")] if wrong else []
        if missing:
            problems.append(f"not in the checkpoint: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
        if extra:
            problems.append(f"not in this config's model: {', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else ""))
        if problems:
            run = os.path.dirname(self.directory)
            raise ResumeError(
                f"checkpoint step {step} in {self.directory} was saved by another model than this config describes "
                f"({'; '.join(problems)}); resume with the config the run was started with "
                f"({os.path.join(run, 'train_config.yaml')}), or set a new output_dir to start another run")

    def save(self, step: int, state, data_iterator, scan_layers: bool, metrics: dict | None = None) -> None:
        """Starts saving `state` (in the layout `scan_layers` names) and the loader position as `step`
        (returns once arrays are copied to the host; the files are written in the background)."""
        layout = {"layout_version": LAYOUT_VERSION, "scan_layers": bool(scan_layers)}
        with orbax_write(self.directory):  # the previous step's save, still being written, may fail here
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=grain.checkpoint.CheckpointSave(data_iterator),
                                                            **{LAYOUT_ITEM: ocp.args.JsonSave(layout)}),
                              metrics=metrics, force=True)

    def saved_layout(self, step: int) -> bool:
        """Whether the checkpoint at `step` holds scanned (stacked) parameters; a checkpoint without a
        layout record predates scanned layers and holds per-layer ones."""
        if not os.path.isdir(os.path.join(self.directory, str(step), LAYOUT_ITEM)):
            return False
        out = self.manager.restore(step, args=ocp.args.Composite(**{LAYOUT_ITEM: ocp.args.JsonRestore()}))
        return bool(out[LAYOUT_ITEM]["scan_layers"])

    def restore(self, step: int, abstract_state, data_iterator, *, config, scan_layers: bool,
                abstract_for: Callable[[bool], dict]):
        """The state at `step` in the `scan_layers` layout, placed as `abstract_state`'s shardings say;
        moves the iterator to its saved position. A checkpoint in the other layout is read as
        `abstract_for(its layout)` describes it and converted (`relayout`). Raises ResumeError when
        the saved parameters' shapes do not fit, UnreadableCheckpoint when the files cannot be read."""
        try:
            saved = self.saved_layout(step)
        except Exception as e:
            raise UnreadableCheckpoint(step, f"its layout record cannot be read ({describe_read_error(e)})") from None
        target = abstract_state if saved == scan_layers else abstract_for(saved)
        self.check_fits(step, target["params"])
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        except Exception as e:  # the shapes fit (checked above): the files are damaged
            quiet_closed_loop_errors()
            raise UnreadableCheckpoint(step, describe_read_error(e)) from None
        state = out["state"]
        if saved != scan_layers:
            shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state)
            state = jax.jit(lambda s: relayout(s, config, scan_layers), out_shardings=shardings)(state)
        return state

    def wait(self) -> None:
        """Waits for the last save; raises WriteError (a full disk, say) when it failed."""
        with orbax_write(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with orbax_write(self.directory):
            self.manager.close()
