"""Progress reporting without any UI: the pipeline calls a plain callback; the CLI draws it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    stage: str           # "convert" (Python writes tensors) or "quantize" (llama.cpp's quantizer)
    tensors_done: int
    tensors_total: int
    bytes_done: int      # source bytes consumed so far (convert) or 0 when unknown (quantize)
    bytes_total: int
    tensor: str = ""     # the tensor just finished


ProgressCallback = Callable[[Progress], None]


def ignore_progress(_: Progress) -> None:
    """The default callback: library users who want no progress get none."""
