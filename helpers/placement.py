"""Where the work runs on a CPU: threads × worker processes, pinning, ONNX Runtime's spinning (lab 10).

A serving machine's cores can be spent as one process with many intra-op threads, as many
single-threaded processes (replicas), or, by mistake, as both at once (oversubscription).
:func:`worker_throughput` measures one such **placement** the only honest way: fresh processes,
each loading the model, warming up and waiting at a start line, then all answering their share of
the same requests at once; the throughput is the requests over the wall time from the start line
to the last answer.  ``pin=True`` gives each process cores of its own with ``os.sched_setaffinity``
(Linux only) before torch is imported, as ``taskset`` would.

:func:`spin_probe` times an ONNX Runtime session the way a server calls it, with idle gaps between
requests, and reads the **CPU time** the process burned per request beside the latency: a session
whose threads spin while idle answers a little sooner and keeps cores busy that a neighbour needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

READY, GO = "@ready", "go"

# One worker: pin (optional), import torch, set its threads, load the saved model, warm up,
# say "@ready", wait for "go" on stdin, answer its share of the requests, print what it saw.
WORKER_PROGRAM = r'''
import json, os, sys, time
settings = json.loads(sys.argv[1])
if settings["cores"] is not None:
    os.sched_setaffinity(0, set(settings["cores"]))
import torch
torch.set_num_threads(settings["threads"])
from transformers import AutoModel
from transformers.utils import logging
logging.disable_progress_bar()
model = AutoModel.from_pretrained(settings["model_dir"]).eval()
generator = torch.Generator().manual_seed(settings["index"])
ids = torch.randint(1000, 2000, (settings["batch"], settings["seq_len"]), generator=generator)
inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
with torch.inference_mode():
    for _ in range(settings["warmup"]):
        model(**inputs)
print("@ready", flush=True)
sys.stdin.readline()
times = []
with torch.inference_mode():
    for _ in range(settings["calls"]):
        start = time.perf_counter()
        model(**inputs)
        times.append((start, time.perf_counter()))
print(json.dumps({"times": times, "threads": torch.get_num_threads(),
                  "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}),
      flush=True)
'''


@dataclass(frozen=True)
class Placement:
    """``processes`` workers with ``threads`` intra-op threads each; ``pin``: cores of their own."""

    processes: int
    threads: int
    pin: bool = False

    @property
    def label(self) -> str:
        text = (f"{self.processes} process{'es' if self.processes > 1 else ''} × "
                f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return text + (", pinned" if self.pin else "")


def can_pin() -> bool:
    """Whether this OS lets a process choose its cores (``os.sched_setaffinity``: Linux)."""
    return hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), or ``range(os.cpu_count())``."""
    if can_pin():
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def core_sets(placement: Placement, cores: Sequence[int] | None = None) -> list[list[int] | None]:
    """The cores each worker of ``placement`` is pinned to (``None``: not pinned).

    Worker *i* gets the next ``threads`` cores in turn, wrapping round when the placement asks
    for more threads than there are cores (then pinned workers share, as they would in real life).
    """
    if not placement.pin:
        return [None] * placement.processes
    if not can_pin():
        raise OSError("pinning needs os.sched_setaffinity, which this OS does not have (Linux only)")
    cores = list(cores if cores is not None else available_cores())
    return [[cores[(i * placement.threads + k) % len(cores)] for k in range(placement.threads)]
            for i in range(placement.processes)]


def _finish(workers: list[subprocess.Popen], timeout: float) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=timeout)


def worker_throughput(model_dir: str | os.PathLike, placement: Placement, *, requests: int, seq_len: int,
                      batch: int = 1, warmup: int = 2, timeout: float = 300.0) -> dict:
    """Run ``requests`` forward passes of ``batch`` × ``seq_len`` tokens, shared by ``placement``'s workers.

    ``model_dir`` is a ``save_pretrained`` folder.  Every worker is a fresh process, so the
    figures include no state from this one (its threads, its caches).  Returns the throughput in
    requests/s over the span from the start line to the last answer, each request's latency in ms,
    and what each worker reported (its thread count and cores).  A worker that dies or hangs raises
    ``RuntimeError`` with its error output.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a save_pretrained folder (no config.json there)")
    if placement.processes < 1 or placement.threads < 1:
        raise ValueError(f"a placement needs at least one process and one thread, got {placement}")
    if requests < placement.processes:
        raise ValueError(f"{requests} requests cannot be shared by {placement.processes} processes")
    shares = [requests // placement.processes + (i < requests % placement.processes)
              for i in range(placement.processes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(placement.threads), "MKL_NUM_THREADS": str(placement.threads),
           "TOKENIZERS_PARALLELISM": "false"}
    workers = []
    try:
        for i, (cores, calls) in enumerate(zip(core_sets(placement), shares)):
            settings = {"index": i, "cores": cores, "threads": placement.threads, "model_dir": str(model_dir),
                        "batch": int(batch), "seq_len": int(seq_len), "warmup": int(warmup), "calls": calls}
            workers.append(subprocess.Popen([sys.executable, "-c", WORKER_PROGRAM, json.dumps(settings)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, env=env))
        deadline = time.monotonic() + timeout
        for proc in workers:  # every worker loaded and warm before any starts
            line = proc.stdout.readline()
            if line.strip() != READY or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"a worker of {placement.label} did not start: "
                                   f"{(line + proc.stderr.read()).strip()[-800:]}")
        start = time.perf_counter()
        for proc in workers:
            proc.stdin.write(GO + "\n")
            proc.stdin.flush()
        reports = []
        for proc in workers:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if proc.returncode != 0 or not out.strip():
                raise RuntimeError(f"a worker of {placement.label} failed: {err.strip()[-800:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{placement.label} took longer than {timeout:.0f} s") from exc
    finally:
        _finish(workers, timeout=10)
    end = max(t[1] for report in reports for t in report["times"])
    latencies = [1000 * (b - a) for report in reports for a, b in report["times"]]
    return {"placement": placement.label, "requests": requests, "seconds": end - start,
            "throughput_rps": requests / (end - start), "latencies_ms": latencies,
            "workers": [{"threads": r["threads"], "cores": r["cores"]} for r in reports]}


def placement_table(runs: dict[str, list[dict]]) -> "pandas.DataFrame":  # noqa: F821
    """One row per placement from its rounds of :func:`worker_throughput`: throughput median and
    spread over the rounds, request latency median and p95 over every request of every round."""
    import pandas as pd
    rows = []
    for label, results in runs.items():
        rps = np.array([r["throughput_rps"] for r in results])
        latencies = np.concatenate([r["latencies_ms"] for r in results])
        rows.append({"placement": label, "rounds": len(results),
                     "requests/s, median": float(np.median(rps)),
                     "requests/s, min-max": f"{rps.min():.2f}-{rps.max():.2f}",
                     "latency p50 (ms)": float(np.percentile(latencies, 50)),
                     "latency p95 (ms)": float(np.percentile(latencies, 95))})
    return pd.DataFrame(rows).set_index("placement")


def spin_probe(run: Callable[[], object], *, requests: int, gap_s: float) -> dict:
    """Call ``run`` ``requests`` times with ``gap_s`` of sleep between calls, as a server with
    idle moments would; return each call's latency (ms) and the CPU time this process used per
    request (ms), idle gaps included: threads that spin while idle burn CPU there."""
    if requests < 1 or gap_s < 0:
        raise ValueError(f"spin_probe needs requests >= 1 and gap_s >= 0, got {requests}, {gap_s}")
    latencies = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(requests):
        start = time.perf_counter()
        run()
        latencies.append(1000 * (time.perf_counter() - start))
        time.sleep(gap_s)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    return {"latencies_ms": latencies, "cpu_ms_per_request": 1000 * cpu / requests,
            "busy_cores": cpu / wall}


def spin_table(runs: dict[str, list[dict]]) -> "pandas.DataFrame":  # noqa: F821
    """One row per session setting from its rounds of :func:`spin_probe`."""
    import pandas as pd
    rows = []
    for label, results in runs.items():
        latencies = np.concatenate([r["latencies_ms"] for r in results])
        cpu = np.array([r["cpu_ms_per_request"] for r in results])
        rows.append({"session": label, "latency p50 (ms)": float(np.percentile(latencies, 50)),
                     "p25-p75 (ms)": f"{np.percentile(latencies, 25):.1f}-{np.percentile(latencies, 75):.1f}",
                     "CPU ms per request": float(np.median(cpu)),
                     "cores kept busy": float(np.median([r["busy_cores"] for r in results]))})
    return pd.DataFrame(rows).set_index("session")



def _spread_overlaps(a: str, b: str) -> bool:
    low_a, high_a = (float(x) for x in a.split("-"))
    low_b, high_b = (float(x) for x in b.split("-"))
    return low_a <= high_b and low_b <= high_a


def placement_verdict(table: "pandas.DataFrame", baseline: str) -> str:  # noqa: F821
    """Which placement of :func:`placement_table` answered most requests per second, against
    ``baseline``, and whether each gap is larger than the spread of its rounds (min-max)."""
    if baseline not in table.index:
        raise KeyError(f"no placement {baseline!r} in the table: {list(table.index)}")
    base = table.loc[baseline]
    parts = []
    for label, row in table.iterrows():
        if label == baseline:
            continue
        ratio = row["requests/s, median"] / base["requests/s, median"]
        within = _spread_overlaps(row["requests/s, min-max"], base["requests/s, min-max"])
        parts.append(f"{label}: {ratio:.2f}x" + (" (within the rounds' spread: a tie)" if within else ""))
    best = table["requests/s, median"].idxmax()
    return (f"Against {baseline} ({base['requests/s, median']:.2f} requests/s): " + "; ".join(parts)
            + f". Most requests per second: {best}.")


def spin_verdict(table: "pandas.DataFrame") -> str:  # noqa: F821
    """What spinning changed for each thread count in :func:`spin_table` (rows named
    ``"<n> thread(s), spinning on|off"``): latency, and CPU time per request."""
    lines = []
    for label in table.index:
        if not label.endswith("spinning on"):
            continue
        off = label[: -len("on")] + "off"
        if off not in table.index:
            continue
        on_row, off_row = table.loc[label], table.loc[off]
        threads = label.split(",")[0]
        lines.append(f"{threads}: spinning changed the median latency {on_row['latency p50 (ms)']:.1f} ms against "
                     f"{off_row['latency p50 (ms)']:.1f} ms ({off_row['latency p50 (ms)'] / on_row['latency p50 (ms)']:.2f}x) "
                     f"and the CPU time per request {on_row['CPU ms per request']:.0f} ms against "
                     f"{off_row['CPU ms per request']:.0f} ms (cores kept busy {on_row['cores kept busy']:.2f} against "
                     f"{off_row['cores kept busy']:.2f})")
    if not lines:
        raise ValueError("spin_verdict needs rows with spinning on and off for the same thread count")
    return ". ".join(lines) + "."
