"""Rich progress bars for the library's progress callbacks: one bar per stage.

Takes quantize.Progress (tensors, bytes) and edge.models.hub.PullProgress (done/total) alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .console import err, human_bytes

LABELS = {"download": "downloading", "convert": "converting", "quantize": "quantizing"}


class StageBars:
    """Draws nothing until the first event, so a model already at hand prints no stray lines."""

    def __init__(self):
        self.bar: Progress | None = None
        self.tasks = {}

    def __call__(self, p) -> None:
        if self.bar is None:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[extra]}"), TimeElapsedColumn())
            self.bar = Progress(*columns, console=err, transient=True)
            self.bar.start()
        done, total = (p.tensors_done, p.tensors_total) if hasattr(p, "tensors_done") else (p.done, p.total)
        if p.stage not in self.tasks:
            self.tasks[p.stage] = self.bar.add_task(LABELS.get(p.stage, p.stage), total=total or None, extra="")
        if getattr(p, "bytes_total", 0):
            extra = f"{human_bytes(p.bytes_done)} / {human_bytes(p.bytes_total)}"
        else:
            extra = getattr(p, "tensor", "") or getattr(p, "detail", "")
        self.bar.update(self.tasks[p.stage], completed=done, total=total or None, extra=extra)


@contextmanager
def stage_bars() -> Iterator[StageBars]:
    bars = StageBars()
    try:
        yield bars
    finally:
        if bars.bar is not None:
            bars.bar.stop()
