"""Lab 10: lab 07's server run in this process, with or without a batcher, and padding arithmetic.

* :class:`BatchService` drives a batcher (the lab's exercise 10.2: ``submit(item, tokens, now)``
  returns a future, ``step(now)`` runs one batch if one is due and returns how many requests it
  served) from one worker thread, the way a serving framework's model loop does.  It keeps the
  size of every batch it ran, so a test can see that batching really happened.
* :func:`lab07_app` builds lab 07's PyTorch app (``serving/common.py``, ``torch_app.py``) in this
  process, optionally with a batcher; :class:`ThreadServer` serves it with uvicorn on localhost
  from a thread, so the lab can start, load and stop servers in seconds.  (Lab 07 runs the same app
  as its own process; here the load generator shares the process and its two cores, which the lab
  says beside its figures.)
* :func:`batch_sweep` times one forward pass per batch size on a device (texts/s, tokens/s) and
  :func:`knee` reads where throughput stops growing, the same way on a CPU and a GPU.
* :func:`padding_batches` and :func:`token_counts`: how many tokens a batch computes under each
  padding strategy, against how many carry text; :func:`library_batches`, the batches
  sentence-transformers' ``encode`` makes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import numpy as np

PADDING_STRATEGIES = ("max_length", "longest", "length buckets")


class BatchService:
    """One worker thread that calls ``batcher.step(clock())`` whenever requests are pending.

    ``submit(item, tokens)`` forwards to ``batcher.submit(item, tokens, clock())`` (whatever that
    raises, a full queue included, reaches the caller at once) and wakes the worker.  While
    requests are pending but no batch is due, the worker checks again every ``poll_s`` seconds.
    """

    def __init__(self, batcher, *, poll_s: float = 0.0005, clock: Callable[[], float] = time.monotonic):
        self.batcher, self.poll_s, self.clock = batcher, float(poll_s), clock
        self.batch_sizes: list[int] = []
        self._pending = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="batch-worker", daemon=True)
        self._thread.start()

    def submit(self, item, tokens: int) -> Future:
        if self._error is not None:
            raise RuntimeError(f"the batch worker stopped: {type(self._error).__name__}: {self._error}")
        future = self.batcher.submit(item, tokens, self.clock())
        with self._lock:
            self._pending += 1
        self._wake.set()
        return future

    def _loop(self) -> None:
        try:
            while not self._closed:
                with self._lock:
                    pending = self._pending
                if not pending:
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                served = int(self.batcher.step(self.clock()) or 0)
                if served:
                    with self._lock:
                        self._pending -= served
                    self.batch_sizes.append(served)
                else:
                    time.sleep(self.poll_s)
        except BaseException as exc:  # a broken step() must not leave callers waiting forever unseen
            self._error = exc

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)


def _import_from(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # torch_app does `from common import ...`
    spec.loader.exec_module(module)
    return module


SERVERS = {"torch_app": "pytorch", "onnx_app": "onnxruntime", "auto_app": "auto"}


def lab07_app(context: str | Path, *, batcher_factory: Callable | None = None, server: str = "torch_app"):
    """One of lab 07's apps built from ``context/app`` (made by ``deployment.prepare_context``):
    the PyTorch one by default, ``server="auto_app"`` for lab 09's backend chosen by measurement.

    ``batcher_factory(run_batch)`` -> ``submit(item, tokens)`` switches on batching (see
    ``common.create_app``).  Serve it with :class:`ThreadServer`, which sets the environment the
    app reads (``MODEL_DIR``, the thread count, eager mode) while it starts.
    """
    folder = Path(context) / "app"
    if not (folder / "common.py").is_file():
        raise FileNotFoundError(f"{folder} has no common.py: build the context with helpers.deployment.prepare_context")
    if server not in SERVERS:
        raise ValueError(f"unknown server {server!r}: use one of {sorted(SERVERS)}")
    common = _import_from(folder, "common")
    module = _import_from(folder, server)
    return common.create_app(SERVERS[server], module.load, batcher_factory=batcher_factory)


class ThreadServer:
    """``with ThreadServer(app, context) as url:`` uvicorn serving ``app`` on localhost from a thread.

    Entering sets ``MODEL_DIR``, ``EMBED_THREADS`` (this process's torch thread count) and
    ``EMBED_COMPILE=0`` for the app's start (restored afterwards), starts uvicorn, and waits until
    the app has loaded and warmed up; leaving stops it.
    """

    def __init__(self, app, context: str | Path, *, startup_timeout: float = 120.0, **env: str):
        import torch
        import uvicorn

        from .deployment import free_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"MODEL_DIR": str(Path(context) / "model"), "EMBED_THREADS": str(torch.get_num_threads()),
                    "EMBED_COMPILE": "0", "EMBED_READINESS": "before-serving", **env}
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.startup_timeout = startup_timeout
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:
            self._error = exc

    def __enter__(self) -> str:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
            self._thread.start()
            deadline = time.perf_counter() + self.startup_timeout
            while not self.server.started:
                if not self._thread.is_alive() or time.perf_counter() > deadline:
                    self.server.should_exit = True
                    why = self._error or "it stopped during start-up (see the log above)"
                    raise RuntimeError(f"the in-process server did not start: {why}")
                time.sleep(0.02)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def batch_sweep(model, tokenizer, sizes: Sequence[int], *, seq_len: int, runs: int, threads: int,
                device: str = "cpu") -> "pandas.DataFrame":  # noqa: F821
    """One forward pass per batch size in ``sizes`` (every text ``seq_len`` tokens) on ``device``,
    timed interleaved (one warm-up each, GPU synchronised): median and p25-p75 latency of a batch,
    ms per text, texts/s and tokens/s, one row per batch size.  ``model`` must already be on
    ``device``."""
    import pandas as pd
    import torch

    from .models import inputs_of_shape
    from .timing import compare
    sizes = [int(b) for b in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch sizes must be at least 1, got {sizes}")
    inputs = {b: {k: v.to(device) for k, v in inputs_of_shape(tokenizer, b, seq_len).items()} for b in sizes}

    def forward(x):
        with torch.inference_mode():
            return model(**x)

    times = compare({f"batch {b}": (lambda x=x: forward(x)) for b, x in inputs.items()},
                    runs=runs, warmup=1, threads=threads, device=device)
    table = pd.DataFrame({
        "batch": sizes,
        "batch latency, median (ms)": [times[f"batch {b}"].median_ms for b in sizes],
        "p25-p75 (ms)": [f"{times[f'batch {b}'].p25_ms:.1f}-{times[f'batch {b}'].p75_ms:.1f}" for b in sizes],
    }).set_index("batch")
    table["ms per text"] = table["batch latency, median (ms)"] / table.index
    table["texts/s"] = 1000 / table["ms per text"]
    table["tokens/s"] = table["texts/s"] * seq_len
    return table


def knee(table: "pandas.DataFrame", share: float = 0.9) -> int:  # noqa: F821
    """The smallest batch size of a :func:`batch_sweep` table whose throughput reaches ``share``
    of the best measured: past it, a bigger batch mostly adds latency."""
    best = table["texts/s"].max()
    return int(min(b for b in table.index if table.loc[b, "texts/s"] >= share * best))


def padding_batches(lengths: Sequence[int], batch_size: int, strategy: str) -> list[list[int]]:
    """Indices of the texts in each batch: arrival order for ``max_length`` and ``longest``;
    sorted by length (then cut into batches) for ``length buckets``, so each batch's texts have
    similar lengths and little padding."""
    if strategy not in PADDING_STRATEGIES:
        raise ValueError(f"unknown padding strategy {strategy!r}: use one of {PADDING_STRATEGIES}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    order = list(range(len(lengths)))
    if strategy == "length buckets":
        order.sort(key=lambda i: lengths[i])
    return [order[i:i + int(batch_size)] for i in range(0, len(order), int(batch_size))]


def library_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of the texts in each batch as sentence-transformers' ``encode`` cuts them: sorted by
    character count, longest first (its estimate of length, ``np.argsort`` of minus ``len``), then
    cut into batches of ``batch_size``. The library's own sequence bucketing, without a tokenizer."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    order = [int(i) for i in np.argsort([-len(text) for text in texts])]
    return [order[i:i + int(batch_size)] for i in range(0, len(order), int(batch_size))]


def token_counts(lengths: Sequence[int], batches: Sequence[Sequence[int]], strategy: str,
                 max_length: int) -> dict[str, int]:
    """``useful`` tokens (the texts' own) and ``computed`` ones (batch rows x padded length)."""
    useful = sum(min(int(lengths[i]), int(max_length)) for batch in batches for i in batch)
    computed = 0
    for batch in batches:
        width = int(max_length) if strategy == "max_length" else min(max(int(lengths[i]) for i in batch), int(max_length))
        computed += width * len(batch)
    return {"useful": useful, "computed": computed}


@contextlib.contextmanager
def served(context: str | Path, *, make_batcher: Callable | None = None, poll_s: float = 0.0005):
    """Lab 07's app in this process: one request at a time, or batched by ``make_batcher(run_batch)``.

    ``make_batcher`` receives the app's batch runner once the model is loaded and returns a batcher
    (``submit``/``step``), which a :class:`BatchService` drives.  Yields ``(url, service)``;
    ``service`` is None for the one-request-at-a-time server.
    """
    holder: dict = {}

    def factory(run_batch):
        holder["service"] = BatchService(make_batcher(run_batch), poll_s=poll_s)
        return holder["service"].submit

    app = lab07_app(context, batcher_factory=factory if make_batcher is not None else None)
    try:
        with ThreadServer(app, context) as url:
            yield url, holder.get("service")
    finally:
        if "service" in holder:
            holder["service"].close()


def static_app(routes: dict[str, tuple[int, object]]):
    """A FastAPI app that answers each ``GET path`` with a fixed ``(status, JSON body)``: a stand-in
    server for testing a client (lab 09's hidden tests), served with :class:`ThreadServer`."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    for path, (status, body) in routes.items():
        app.add_api_route(path, lambda status=status, body=body: JSONResponse(status_code=status, content=body),
                          methods=["GET"])
    return app
