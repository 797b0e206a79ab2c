"""Metrics sinks: a jsonl log (one record per logged step or evaluation) and TensorBoard event files
(tensorboardX: no TensorFlow). Only process 0 writes."""

from __future__ import annotations

import json
import os

from led_flax.utils.files import write_atomic, writing


class MetricsLog:
    def __init__(self, directory: str, enabled: bool = True, tensorboard: bool = True):
        self.path = os.path.join(directory, "metrics.jsonl")
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # pragma: no cover - a declared dependency
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(os.path.join(directory, "tensorboard"), flush_secs=10)

    def truncate(self, step: int) -> None:
        """Drops records after `step` (written by a run that died before its next checkpoint), so a
        resumed run's log reads as one uninterrupted run."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            keep = []
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                    if json.loads(line)["step"] <= step:
                        keep.append(line.rstrip("\n"))
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by the kill
        write_atomic(self.path, keep)

    def write(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, **{k: (float(v) if not isinstance(v, (int, str)) else v)
                                                for k, v in values.items()}}
        with writing(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        """Closes the TensorBoard writer. On a full or read-only disk its last events are dropped, not
        raised: the jsonl log is the run's record, and the job is already stopping with one line that
        names the disk. tensorboardX would otherwise retry the flush from its worker thread and its
        exit hook, each printing a traceback after that line."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError:
            for file_writer in list(getattr(writer, "all_writers", {}).values()):
                events = getattr(file_writer, "event_writer", None)
                worker = getattr(events, "_worker", None)
                if worker is not None:
                    try:
                        worker.stop()
                    except OSError:
                        pass
                if events is not None:
                    events._closed = True  # tensorboardX's own flag: its exit hook then does nothing
