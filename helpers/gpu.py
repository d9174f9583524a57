"""What lab 04 measures on a GPU: copy bandwidth, CUDA graphs, kernel launches and a profiler timeline.

Everything here that needs CUDA says so with a clear :class:`RuntimeError` on a machine
without it (the labs check :func:`helpers.best_device` first and print why they skip).
:func:`host_syncs` runs anywhere: it finds the operations that make the host wait for
the device's *values* (``.item()``, ``bool(tensor)``, ``nonzero``), which is what stops
a forward pass from being captured as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode  # documented in "Extending PyTorch"

from .timing import Timing, benchmark

# ATen operations that copy a device value to the host and branch on it in Python.
_SYNC_OPS = ("aten::_local_scalar_dense", "aten::is_nonzero", "aten::item", "aten::nonzero",
             "aten::equal", "aten::allclose")


def require_cuda(what: str) -> None:
    """Raise a readable error when ``what`` needs a CUDA GPU and there is none."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"{what} needs a CUDA GPU, and torch sees none on this machine "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}).")


def skip_reason(what: str) -> str | None:
    """``None`` where CUDA is usable; elsewhere the line a lab prints instead of running ``what``."""
    if torch.cuda.is_available():
        return None
    where = "Colab (Runtime > Change runtime type > T4 GPU) or a machine with an NVIDIA GPU"
    return (f"[GPU] skipped: {what} needs a CUDA GPU and this kernel has none "
            f"(torch.cuda.is_available() is False). Run this section on {where}.")


class _SyncRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = f"aten::{func.overloadpacket.__name__}"
        if name in _SYNC_OPS:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def host_syncs(fn: Callable[[], object]) -> list[str]:
    """The operations in ``fn()`` that read a tensor's value back into Python, in call order.

    On a GPU each one stalls the host until the device has caught up, and none of them may
    run while a CUDA graph is being captured (capture fails with "operation not permitted
    when stream is capturing").  Runs on any device, so a CPU-only machine can find them too.
    """
    with _SyncRecorder() as recorder:
        fn()
    return recorder.found


def copy_bandwidth(nbytes: int, *, pinned: bool, non_blocking: bool, runs: int = 20, warmup: int = 3,
                   device: str = "cuda") -> tuple[float, Timing]:
    """Host-to-device copy rate in GB/s (10**9 bytes/s) for a host buffer of ``nbytes``.

    ``pinned`` allocates the host buffer in page-locked memory (``tensor.pin_memory()``):
    the GPU's copy engine can read it directly; pageable memory is first staged through
    a pinned buffer by the driver.  ``non_blocking`` lets the call return before the copy
    ends; the timing still waits for it (the device is synchronised around every call).
    """
    require_cuda("Measuring host-to-device bandwidth")
    host = torch.empty(int(nbytes), dtype=torch.uint8)
    if pinned:
        host = host.pin_memory()
    target = torch.empty(int(nbytes), dtype=torch.uint8, device=device)

    def copy():
        target.copy_(host, non_blocking=non_blocking)

    label = f"{'pinned' if pinned else 'pageable'}, non_blocking={non_blocking}"
    timing = benchmark(copy, runs=runs, warmup=warmup, device=device, label=label)
    return nbytes / timing.median / 1e9, timing


def capture_cuda_graph(forward: Callable[[], torch.Tensor], warmup: int = 3):
    """Record ``forward()`` (which reads fixed *static* input tensors) as a CUDA graph.

    Returns ``(graph, static_output)``: ``graph.replay()`` re-launches every recorded
    kernel with one call and writes into ``static_output``.  To run new data, copy it into
    the same input tensors first (``static_ids.copy_(new_ids)``): a graph replays the
    addresses it recorded, so shapes are fixed and the inputs must be the same tensors.
    Warm-up runs on a side stream first, as PyTorch's CUDA-graph notes require.
    """
    require_cuda("CUDA graph capture")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(int(warmup)):
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = forward()
    torch.cuda.synchronize()
    return graph, static_output


def _profile(fn: Callable[[], object], steps: int):
    from torch.profiler import ProfilerActivity, profile
    fn()  # not profiled: first-call work
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(int(steps)):
            fn()
        torch.cuda.synchronize()
    return prof


def kernel_launches(fn: Callable[[], object], steps: int = 3) -> float:
    """GPU kernels (and memory copies/sets) launched per call of ``fn``, from the profiler."""
    require_cuda("Counting kernel launches")
    prof = _profile(fn, steps)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels) / int(steps)


def timeline(fn: Callable[[], object], steps: int = 2) -> "pandas.DataFrame":  # noqa: F821
    """One row per host operation and per GPU kernel during ``steps`` calls of ``fn``.

    Columns: ``lane`` ("host: ATen ops" or "GPU: kernels"), ``name``, ``start_us``,
    ``duration_us``, with times relative to the first event.  Host rows are top-level
    ATen ops only (their children run inside them).
    """
    import pandas as pd
    require_cuda("A host/GPU profiler timeline")
    prof = _profile(fn, steps)
    rows = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            lane = "GPU: kernels"
        elif e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            lane = "host: ATen ops"
        else:
            continue
        rows.append({"lane": lane, "name": e.name, "start_us": e.time_range.start,
                     "duration_us": e.time_range.end - e.time_range.start})
    table = pd.DataFrame(rows, columns=["lane", "name", "start_us", "duration_us"])
    if len(table):
        table["start_us"] -= table["start_us"].min()
    return table.sort_values("start_us", ignore_index=True)


def plot_timelines(timelines: Mapping[str, "pandas.DataFrame"], title: str | None = None):  # noqa: F821
    """Draw each timeline (see :func:`timeline`) as two lanes, host above GPU, one panel each."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 1.6 + 1.4 * len(timelines)), squeeze=False)
    lanes = ["GPU: kernels", "host: ATen ops"]
    span = max((t["start_us"] + t["duration_us"]).max() for t in timelines.values() if len(t)) if timelines else 1
    for ax, (label, table) in zip(axes[:, 0], timelines.items()):
        for y, lane in enumerate(lanes):
            rows = table[table["lane"] == lane]
            ax.broken_barh(list(zip(rows["start_us"], rows["duration_us"].clip(lower=0.5))), (y - 0.35, 0.7),
                           color=("tab:green" if y == 0 else "tab:blue"))
        ax.set_yticks(range(len(lanes)), lanes)
        ax.set_xlim(0, span)
        ax.set_title(label, loc="left", fontsize=10)
    axes[-1, 0].set_xlabel("time (µs, same scale in every panel)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
