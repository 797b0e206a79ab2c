"""Train-state checkpoints with orbax: the last K and the best by validation loss, written
asynchronously, each with the data loader's position.

Orbax writes a step into a temporary directory and renames it only when every file (and every
process) is done, so a job killed mid-save leaves the previous checkpoints as they were; the
leftover temporary directory is removed when the next job opens the folder.

Each step also records its parameter layout (`layout`: {"layout_version": 2, "scan_layers": ...}).
Checkpoints written before layers could scan have no such record: they hold the per-layer layout
(version 1). A checkpoint in the other layout than the run's is restored in its own layout and its
parameters and AdamW moments converted (`led_flax.stacking`), so older runs resume.
"""

from __future__ import annotations

import os
from typing import Callable

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


LAYOUT_VERSION = 2
LAYOUT_ITEM = "layout"


def relayout(state: dict, config, scanned: bool) -> dict:
    """A train state with its params and every parameter-shaped tree of its optimizer state (AdamW's
    moments) in the `scanned` layout."""
    from led_flax.stacking import to_layout

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

    def save(self, step: int, state, data_iterator, scan_layers: bool, metrics: dict | None = None) -> None:
        """Starts saving `state` (in the layout `scan_layers` names) and the loader position as `step`
        (returns once arrays are copied to the host; the files are written in the background)."""
        layout = {"layout_version": LAYOUT_VERSION, "scan_layers": bool(scan_layers)}
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
        `abstract_for(its layout)` describes it and converted (`relayout`)."""
        saved = self.saved_layout(step)
        target = abstract_state if saved == scan_layers else abstract_for(saved)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        state = out["state"]
        if saved != scan_layers:
            shardings = jax.tree_util.tree_map(lambda s: s.sharding, abstract_state)
            state = jax.jit(lambda s: relayout(s, config, scan_layers), out_shardings=shardings)(state)
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
