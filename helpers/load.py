"""A load generator for a local server: closed-loop clients and open-loop (Poisson) arrivals.

Lab 10 measures a server under load, not in a loop of one request after another.  Two ways to
offer load, the two the field uses (wrk and locust are closed-loop; wrk2, vegeta and k6's
arrival-rate executors are open-loop):

* **closed loop**: ``clients`` callers, each sending its next request as soon as the previous one
  answers.  The offered load adapts to the server: a slow server is sent less.  Little's law ties
  the three figures: in-flight requests (= ``clients``) = throughput x mean latency.
* **open loop**: requests arrive at a set mean rate with exponential gaps (a Poisson process), as
  independent users do, whether or not the server keeps up.  Past the server's capacity the queue,
  and with it the latency, grows for as long as the run lasts: the "hockey stick".

Both are bounded by a number of requests **and** a duration, and both return the raw request log
(one row per request: when it was meant to be sent, when it was sent, when it ended, its status).
Open-loop latency is measured from the **scheduled** time: a generator that measures from the
moment it got round to sending hides exactly the queueing it is meant to show ("coordinated
omission", Gil Tene).  Summarising the log (percentiles, throughput, Little's law) is lab 10's
exercise 10.1, so it is not here.

:class:`LoadGenerator` runs either kind in a process of its own, so the generator's threads do not
compete for the interpreter lock of the server they measure (lab 10 serves from the notebook's
process); on a 2-core machine the two still share the cores, which the lab says beside its figures.

Only local servers are accepted: this is a teaching tool, not something to point at a service.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOG_COLUMNS = ["request", "client", "scheduled_s", "sent_s", "done_s", "status", "error"]

Send = Callable[[int], int]  # send(request number) -> HTTP status (or any int: 200 means answered)


def _check_bounds(requests: int, duration_s: float) -> None:
    if int(requests) < 1:
        raise ValueError(f"requests must be at least 1, got {requests!r}")
    if not float(duration_s) > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s!r}")


def _check_target(url: str, payloads: Sequence[dict]) -> None:
    if urlsplit(url).hostname not in LOCAL_HOSTS:
        raise ValueError(f"the load generator only sends to this machine ({sorted(LOCAL_HOSTS)}), not to {url!r}")
    if not payloads:
        raise ValueError("a load needs at least one payload")


class HttpSender:
    """``send(i)``: POST ``payloads[i % len(payloads)]`` as JSON to ``url``; returns the HTTP status.

    One ``httpx.Client`` (thread-safe) with a pool of up to ``connections`` keep-alive connections
    serves every calling thread, as a real client would; building a client per thread would put
    its set-up (an SSL context) inside the first requests' latency.  A request that fails to
    connect or times out returns status 0.  ``close()`` closes the connections.
    """

    def __init__(self, url: str, payloads: Sequence[dict], *, timeout: float = 30.0, connections: int = 64):
        import httpx
        _check_target(url, payloads)
        self.url, self.payloads = url, list(payloads)
        limits = httpx.Limits(max_connections=int(connections), max_keepalive_connections=int(connections))
        self._client = httpx.Client(timeout=float(timeout), limits=limits)
        self._errors = (httpx.HTTPError,)

    def __call__(self, i: int) -> int:
        try:
            return self._client.post(self.url, json=self.payloads[i % len(self.payloads)]).status_code
        except self._errors:
            return 0

    def close(self) -> None:
        self._client.close()


def _row(i: int, client: int, scheduled: float, sent: float, done: float, status: int | None,
         error: str | None) -> dict:
    return {"request": i, "client": client, "scheduled_s": scheduled, "sent_s": sent, "done_s": done,
            "status": status, "error": error}


def _call(send: Send, i: int) -> tuple[int | None, str | None]:
    try:
        return int(send(i)), None
    except Exception as exc:  # a failed request is a row of the log, not a crash of the generator
        return None, f"{type(exc).__name__}: {exc}"


def closed_loop(send: Send, *, clients: int, requests: int, duration_s: float) -> pd.DataFrame:
    """``clients`` threads send back to back until ``requests`` have been sent or ``duration_s`` passed.

    Times are seconds from the start of the run; ``scheduled_s`` equals ``sent_s`` (a closed-loop
    client sends when it is free).
    """
    _check_bounds(requests, duration_s)
    if int(clients) < 1:
        raise ValueError(f"clients must be at least 1, got {clients!r}")
    rows: list[dict] = []
    counter = iter(range(int(requests)))
    take = threading.Lock()
    start = time.perf_counter()
    stop_at = start + float(duration_s)

    def client(c: int) -> None:
        while True:
            with take:
                i = next(counter, None)
            if i is None or time.perf_counter() >= stop_at:
                return
            sent = time.perf_counter()
            status, error = _call(send, i)
            done = time.perf_counter()
            rows.append(_row(i, c, sent - start, sent - start, done - start, status, error))

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(int(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pd.DataFrame(rows, columns=LOG_COLUMNS).sort_values("request", ignore_index=True)


def poisson_schedule(rate_rps: float, requests: int, duration_s: float, seed: int = 0) -> np.ndarray:
    """Arrival times (s) of a Poisson process at ``rate_rps``, at most ``requests``, all before ``duration_s``."""
    _check_bounds(requests, duration_s)
    if not float(rate_rps) > 0:
        raise ValueError(f"rate_rps must be positive, got {rate_rps!r}")
    gaps = np.random.default_rng(seed).exponential(1.0 / float(rate_rps), size=int(requests))
    times = np.cumsum(gaps)
    return times[times < float(duration_s)]


def open_loop(send: Send, *, rate_rps: float, requests: int, duration_s: float, seed: int = 0,
              max_in_flight: int = 64) -> pd.DataFrame:
    """Send requests at Poisson arrival times, whether or not earlier ones have answered.

    Up to ``max_in_flight`` requests are outstanding at once (threads of a pool); a request whose
    time comes while all are busy waits for one, and that wait counts in its latency, because
    latency is taken from ``scheduled_s``.  The schedule is fixed by ``seed``: the same offered load
    for every server compared.
    """
    schedule = poisson_schedule(rate_rps, requests, duration_s, seed)
    rows: list[dict] = []
    start = time.perf_counter()

    def one(i: int, at: float) -> None:
        sent = time.perf_counter()
        status, error = _call(send, i)
        done = time.perf_counter()
        rows.append(_row(i, -1, at, sent - start, done - start, status, error))

    with ThreadPoolExecutor(max_workers=int(max_in_flight), thread_name_prefix="open-loop") as pool:
        for i, at in enumerate(schedule):
            delay = start + float(at) - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, float(at))
    return pd.DataFrame(rows, columns=LOG_COLUMNS).sort_values("request", ignore_index=True)


def _run_in_child(kind: str, url: str, payloads: list, settings: dict) -> pd.DataFrame:
    send = HttpSender(url, payloads, connections=max(int(settings.get("clients", 0)), int(settings.get("max_in_flight", 64))))
    try:
        return closed_loop(send, **settings) if kind == "closed" else open_loop(send, **settings)
    finally:
        send.close()


class LoadGenerator:
    """``with LoadGenerator() as gen: gen.open_loop(url, payloads, rate_rps=..., ...)``: the same loads
    as :func:`closed_loop` and :func:`open_loop`, sent over HTTP from one separate worker process.

    The process is started once (a second or so) and reused for every run; each run returns its
    request log here.  Keyword arguments are those of :func:`closed_loop` / :func:`open_loop`.
    """

    def __init__(self):
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def closed_loop(self, url: str, payloads: Sequence[dict], **settings) -> pd.DataFrame:
        _check_target(url, payloads)  # here, with a clear error, not in the child
        return self._pool.submit(_run_in_child, "closed", url, list(payloads), settings).result()

    def open_loop(self, url: str, payloads: Sequence[dict], **settings) -> pd.DataFrame:
        _check_target(url, payloads)
        return self._pool.submit(_run_in_child, "open", url, list(payloads), settings).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "LoadGenerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_latency_vs_load(table: pd.DataFrame, *, load: str = "offered (req/s)", title: str | None = None,
                         budget_ms: float | None = None, ax=None):
    """p50/p95/p99 against offered load, one colour per server (the ``server`` column).

    ``table`` has one row per (server, load) with ``p50_ms``, ``p95_ms`` and ``p99_ms``; a dotted
    line marks the latency budget when one is given.  The p99 line is where the knee shows first.
    """
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
    styles = {"p50_ms": ":", "p95_ms": "-", "p99_ms": "--"}
    for k, (server, rows) in enumerate(table.groupby("server", sort=False)):
        rows = rows.sort_values(load)
        for col, style in styles.items():
            ax.plot(rows[load], rows[col], style, marker="o", color=f"C{k}", label=f"{server} {col[:3]}")
    if budget_ms is not None:
        ax.axhline(budget_ms, color="grey", linestyle=(0, (1, 3)), label=f"budget {budget_ms:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel(load)
    ax.set_ylabel("latency (ms, log scale)")
    ax.legend(fontsize=8, ncol=2)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig if fig is not None else ax.figure


def post_concurrently(url: str, payloads: Sequence[dict], *, clients: int = 8, timeout: float = 60.0) -> list:
    """POST every payload to ``url`` from ``clients`` threads at once; the responses' JSON (or the
    status code where it was not 200), in the payloads' order.  For checking answers under load."""
    import httpx

    _check_target(url, payloads)

    limits = httpx.Limits(max_connections=int(clients), max_keepalive_connections=int(clients))
    with httpx.Client(timeout=timeout, limits=limits) as client:  # one client: its set-up is paid once

        def one(payload: dict):
            response = client.post(url, json=payload)
            return response.json() if response.status_code == 200 else response.status_code

        with ThreadPoolExecutor(max_workers=int(clients)) as pool:
            return list(pool.map(one, payloads))
