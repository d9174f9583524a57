"""helpers.load and helpers.batching: the load generator's bounds and logs, the batch service, the
padding arithmetic, and lab 07's server with a batcher between its handlers and the model."""

import collections
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from helpers import batching, load

# A reference batcher for these tests only: the course's batcher is lab 10's exercise 10.2, and
# students get helpers, so no batcher lives there.


class Full(RuntimeError):
    pass


class SimpleBatcher:
    def __init__(self, run_batch, max_batch_size=8, max_wait_s=0.002, max_queue=1000):
        self.run_batch, self.size, self.wait, self.limit = run_batch, max_batch_size, max_wait_s, max_queue
        self.queue = collections.deque()
        self.lock = threading.Lock()

    def submit(self, item, tokens, now):
        future = Future()
        with self.lock:
            if len(self.queue) >= self.limit:
                raise Full(f"{len(self.queue)} waiting")
            self.queue.append((now, item, future))
        return future

    def step(self, now):
        with self.lock:
            if not self.queue or (len(self.queue) < self.size and now - self.queue[0][0] < self.wait):
                return 0
            batch = [self.queue.popleft() for _ in range(min(self.size, len(self.queue)))]
        for (_, _, future), result in zip(batch, self.run_batch([item for _, item, _ in batch])):
            future.set_result(result)
        return len(batch)


def test_only_local_servers_are_loaded():
    with pytest.raises(ValueError, match="only sends to this machine"):
        load.HttpSender("http://example.com/embed", [{"texts": ["a"]}])
    with pytest.raises(ValueError, match="at least one payload"):
        load.HttpSender("http://127.0.0.1:9/embed", [])
    gen = load.LoadGenerator()
    try:
        with pytest.raises(ValueError, match="only sends to this machine"):
            gen.open_loop("http://10.0.0.1/embed", [{"texts": ["a"]}], rate_rps=1, requests=1, duration_s=1)
    finally:
        gen.close()


def test_closed_loop_is_bounded_by_requests_and_by_time():
    log = load.closed_loop(lambda i: 200, clients=3, requests=30, duration_s=10)
    assert list(log.columns) == load.LOG_COLUMNS and len(log) == 30 and sorted(log["request"]) == list(range(30))
    assert (log["scheduled_s"] == log["sent_s"]).all() and (log["done_s"] >= log["sent_s"]).all()
    began = time.perf_counter()
    slow = load.closed_loop(lambda i: time.sleep(0.05) or 200, clients=2, requests=10_000, duration_s=0.3)
    assert time.perf_counter() - began < 2 and 4 <= len(slow) <= 20
    assert set(slow["client"]) == {0, 1}


def test_a_failing_request_is_a_row_of_the_log():
    def send(i):
        if i % 2:
            raise ConnectionError("refused")
        return 200
    log = load.closed_loop(send, clients=1, requests=4, duration_s=5)
    assert list(log["status"].isna()) == [False, True, False, True]
    assert log["error"].iloc[1] == "ConnectionError: refused"


def test_open_loop_keeps_its_schedule_and_measures_from_it():
    a = load.poisson_schedule(100, 1000, 5, seed=3)
    assert np.array_equal(a, load.poisson_schedule(100, 1000, 5, seed=3)) and (a < 5).all() and np.all(np.diff(a) > 0)
    assert 350 < len(a) <= 1000  # about 100/s for 5 s, at most the request bound
    # one sender at a time, each taking 50 ms, offered 50/s: requests wait for the sender, and the log shows it
    log = load.open_loop(lambda i: time.sleep(0.05) or 200, rate_rps=50, requests=12, duration_s=5, seed=1,
                         max_in_flight=1)
    assert len(log) == 12
    waited = log["sent_s"] - log["scheduled_s"]
    assert waited.iloc[-1] > 0.1, "later requests were sent late; their latency counts from the schedule"
    assert ((log["done_s"] - log["scheduled_s"]) >= (log["done_s"] - log["sent_s"])).all()


def test_batch_service_serves_every_caller_its_own_answer():
    service = batching.BatchService(SimpleBatcher(lambda items: [x * 10 for x in items], max_batch_size=4))
    try:
        futures = [service.submit(i, 1) for i in range(20)]
        assert [f.result(timeout=5) for f in futures] == [10 * i for i in range(20)]
        assert sum(service.batch_sizes) == 20 and max(service.batch_sizes) <= 4
    finally:
        service.close()


def test_a_broken_batcher_is_reported_to_the_next_caller():
    class Broken(SimpleBatcher):
        def step(self, now):
            raise ZeroDivisionError("oops")
    service = batching.BatchService(Broken(lambda items: items))
    try:
        service.submit(1, 1)
        deadline = time.time() + 5
        while service._error is None and time.time() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="batch worker stopped: ZeroDivisionError"):
            service.submit(2, 1)
    finally:
        service.close()


def test_padding_strategies_count_useful_and_computed_tokens():
    lengths = [5, 30, 6, 29]
    assert batching.padding_batches(lengths, 2, "longest") == [[0, 1], [2, 3]]
    assert batching.padding_batches(lengths, 2, "length buckets") == [[0, 2], [3, 1]]
    with pytest.raises(ValueError, match="unknown padding strategy"):
        batching.padding_batches(lengths, 2, "random")
    fixed = batching.token_counts(lengths, batching.padding_batches(lengths, 2, "max_length"), "max_length", 32)
    longest = batching.token_counts(lengths, batching.padding_batches(lengths, 2, "longest"), "longest", 32)
    buckets = batching.token_counts(lengths, batching.padding_batches(lengths, 2, "length buckets"), "length buckets", 32)
    assert fixed == {"useful": 70, "computed": 128}
    assert longest == {"useful": 70, "computed": 60 + 58}
    assert buckets == {"useful": 70, "computed": 12 + 60}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    import helpers
    from helpers.deployment import prepare_context, serving_dir
    folder = tmp_path_factory.mktemp("lab10-context")
    small = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)
    with helpers.quiet_stderr(report=False):
        prepare_context(serving_dir("solutions/07_deployment/serving"), folder, small, onnx=False)
    return folder


def test_the_server_batches_and_answers_as_it_does_one_at_a_time(context):
    texts = [f"sentence number {i} about {'cooking ' * (i % 5)}" for i in range(16)]
    payloads = [{"texts": [t]} for t in texts]
    with batching.served(context) as (url, service):
        assert service is None
        alone = load.post_concurrently(url + "/embed", payloads, clients=1)
    with batching.served(context, make_batcher=lambda rb: SimpleBatcher(rb, max_batch_size=8, max_wait_s=0.02)) as (url, service):
        together = load.post_concurrently(url + "/embed", payloads, clients=8)
        sizes = list(service.batch_sizes)
        with load.LoadGenerator() as gen:
            log = gen.closed_loop(url + "/embed", payloads, clients=4, requests=40, duration_s=10)
    assert max(sizes) >= 2, f"nothing was batched: {sizes}"
    a = np.array([r["embeddings"][0] for r in alone])
    b = np.array([r["embeddings"][0] for r in together])
    assert np.allclose(a, b, atol=1e-4), "padding to the batch's longest must not change an answer"
    assert len(log) == 40 and (log["status"] == 200).all()


def test_a_full_queue_answers_503_at_once(context):
    class AlwaysFull(SimpleBatcher):
        def submit(self, item, tokens, now):
            raise Full("3 requests are waiting already (max_queue=3)")
    import httpx
    with batching.served(context, make_batcher=AlwaysFull) as (url, _):
        began = time.perf_counter()
        response = httpx.post(url + "/embed", json={"texts": ["hello"]}, timeout=10)
    assert response.status_code == 503 and response.headers.get("retry-after") == "1"
    assert "busy: Full: 3 requests are waiting" in response.json()["detail"]
    assert time.perf_counter() - began < 2
