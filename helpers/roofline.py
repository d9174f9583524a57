"""FLOPs per forward pass, and how close a measured time comes to the hardware's limit (MFU).

Model-FLOPs utilization (MFU) = FLOPs the model needs / (time taken x peak FLOP/s of the
device in that precision).  It says how much of the machine a variant uses, which a
speedup alone cannot: 3x faster than a slow baseline may still be 5 % of the GPU.

The *counted* FLOPs here come from PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode`
(matrix multiplications and attention, 2 FLOPs per multiply-add), so a lab can check an
analytic formula against what the model really ran.  The peak must be *measured* on the
device in the same precision (lab 05 does it), not copied from a datasheet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn()``, as counted by ``FlopCounterMode`` (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def achieved_flops_per_s(flops: float, seconds: float) -> float:
    """The rate a run achieved: FLOPs of the work / the seconds it took."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    return float(flops) / float(seconds)


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model-FLOPs utilization: achieved rate / peak rate (0.42 means 42 % of the peak)."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak_flops_per_s must be positive, got {peak_flops_per_s!r}")
    return achieved_flops_per_s(flops, seconds) / float(peak_flops_per_s)


def floor_seconds(flops: float, peak_flops_per_s: float) -> float:
    """The roofline floor: no run of this work can be faster than FLOPs / peak.

    A measured time below it means the measurement is wrong (an unsynchronised GPU, work
    skipped), not that the code is brilliant.
    """
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak_flops_per_s must be positive, got {peak_flops_per_s!r}")
    return float(flops) / float(peak_flops_per_s)
