"""Honest timing: warm up, synchronise the device, repeat, report median and spread with the environment.

Statistics come from :class:`torch.utils.benchmark.Measurement` (median, interquartile
range, printing).  What this module adds is the discipline around each timed call:

* ``warmup`` calls are made first and never counted (lazy initialisation, allocator
  growth, caches, compilation);
* CUDA (or MPS) work is asynchronous, so the device is synchronised before the clock
  starts and before it stops; otherwise you time the *launch* of the work, not the work;
* the CPU thread count is set explicitly for the measurement and recorded;
* every repetition is kept, so the spread can be shown next to the median.

:func:`compare` times several variants *interleaved* in one process (one call of each
per round, in rotating order), so a slow minute on a shared machine hits all of them
alike instead of only the variant that happened to run then.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec, set_torch_threads

from .hardware import runtime_environment


@dataclass(frozen=True)
class Timing:
    """One variant's measurement: raw per-call times plus where they were taken.

    Times are in seconds inside ``measurement``; the ``*_ms`` properties are for people.
    """

    label: str
    measurement: Measurement
    warmup: int
    env: dict = field(default_factory=dict)

    @classmethod
    def from_times(cls, label: str, times: list[float], warmup: int = 0, env: dict | None = None,
                   threads: int = 1) -> "Timing":
        """A Timing from per-call times in seconds (e.g. measured elsewhere, or known values in tests)."""
        if not times:
            raise ValueError("a Timing needs at least one time")
        return _as_timing(label, [float(t) for t in times], warmup, threads, dict(env or {}))

    @property
    def times(self) -> list[float]:
        """Every timed call, in seconds, in the order they ran."""
        return list(self.measurement.times)

    @property
    def runs(self) -> int:
        return len(self.measurement.times)

    @property
    def median(self) -> float:
        return self.measurement.median

    @property
    def median_ms(self) -> float:
        return self.measurement.median * 1e3

    @property
    def p25_ms(self) -> float:
        return self.measurement._p25 * 1e3

    @property
    def p75_ms(self) -> float:
        return self.measurement._p75 * 1e3

    @property
    def iqr_ms(self) -> float:
        return self.measurement.iqr * 1e3

    @property
    def min_ms(self) -> float:
        return min(self.measurement.times) * 1e3

    def summary(self) -> str:
        return (f"{self.label}: median {self.median_ms:.3f} ms, IQR {self.iqr_ms:.3f} ms "
                f"({self.p25_ms:.3f}-{self.p75_ms:.3f}), min {self.min_ms:.3f} ms, {self.runs} runs "
                f"after {self.warmup} warm-up, {self.env.get('cpu_threads')} thread(s) on "
                f"{self.env.get('device_name', '?')}")

    def __repr__(self) -> str:
        return f"Timing({self.summary()})"

    def _repr_html_(self) -> str:
        import html
        return f"<code>{html.escape(self.summary())}</code>"


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The device the work runs on: as given, else CUDA if this process is using it, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.device("cuda")
    return torch.device("cpu")


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for all queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[int]:
    if threads is None:
        yield torch.get_num_threads()
        return
    if int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    with set_torch_threads(int(threads)):
        yield int(threads)


def _check(fn: Callable, runs: int, warmup: int, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable taking no arguments, got {type(fn).__name__}")
    if int(runs) < 1:
        raise ValueError(f"runs must be at least 1, got {runs!r}")
    if int(warmup) < 0:
        raise ValueError(f"warmup must be 0 or more, got {warmup!r}")


def _timed_call(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _as_timing(label: str, times: list[float], warmup: int, threads: int, env: dict) -> Timing:
    spec = TaskSpec(stmt=label, setup="", label=label, description=label, num_threads=threads)
    return Timing(label=label, measurement=Measurement(1, times, spec), warmup=int(warmup), env=env)


def benchmark(fn: Callable[[], object], *, runs: int = 100, warmup: int = 10,
              threads: int | None = None, device: str | torch.device | None = None,
              label: str = "fn") -> Timing:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls; return a :class:`Timing`.

    ``device`` is where the work runs ("cpu", "cuda", "mps"); GPU work is synchronised
    around every call.  With ``device=None`` CUDA is synchronised if it is in use.
    ``threads`` sets torch's CPU thread count for the measurement (restored afterwards).
    """
    _check(fn, runs, warmup, "fn")
    device = _resolve_device(device)
    sync = _synchronizer(device)
    with _threads(threads) as n_threads:
        for _ in range(int(warmup)):
            fn()
        sync()
        times = [_timed_call(fn, sync) for _ in range(int(runs))]
        env = runtime_environment(device, n_threads)
    return _as_timing(label, times, warmup, n_threads, env)


class Comparison(dict):
    """``{variant name: Timing}`` from :func:`compare`, in the order the variants were given.

    ``table()`` and ``plot()`` hand it to :mod:`helpers.report`.
    """

    def table(self, baseline: str | None = None, quality=None):
        from .report import speedup_table
        return speedup_table(self, baseline=baseline, quality=quality)

    def plot(self, baseline: str | None = None, quality=None, **kwargs):
        from .report import plot_speedups
        return plot_speedups(self.table(baseline, quality), **kwargs)


def compare(variants: Mapping[str, Callable[[], object]], *, runs: int = 100, warmup: int = 10,
            threads: int | None = None, device: str | torch.device | None = None,
            progress: bool = True) -> Comparison:
    """Time several zero-argument callables interleaved in one process.

    Each variant gets ``warmup`` untimed calls, then ``runs`` rounds follow; in each round
    every variant runs once, the starting variant rotating from round to round.  A progress
    bar is shown when ``progress`` is true (pass ``False`` inside graded test cells).
    """
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("compare() needs a non-empty mapping {name: zero-argument callable}")
    for name, fn in variants.items():
        _check(fn, runs, warmup, f"variant {name!r}")
    names = list(variants)
    device = _resolve_device(device)
    sync = _synchronizer(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(names) * (int(runs) + int(warmup)), desc="timing", unit="call", leave=False)
    try:
        with _threads(threads) as n_threads:
            for name in names:
                for _ in range(int(warmup)):
                    variants[name]()
                    if bar is not None:
                        bar.update()
            sync()
            for r in range(int(runs)):
                for k in range(len(names)):
                    name = names[(r + k) % len(names)]
                    times[name].append(_timed_call(variants[name], sync))
                    if bar is not None:
                        bar.update()
            env = runtime_environment(device, n_threads)
    finally:
        if bar is not None:
            bar.close()
    return Comparison({n: _as_timing(n, times[n], warmup, n_threads, env) for n in names})
