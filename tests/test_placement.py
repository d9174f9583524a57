"""helpers.placement (lab 10): workers in fresh processes, pinning, ONNX Runtime's spinning probe,
and helpers.batching's batch sweep. Behaviour only: which cores and threads each worker really
had, that every request is counted, and that the verdicts read their tables."""

import time

import pandas as pd
import pytest

import helpers
from helpers import batching, placement
from helpers.placement import Placement


def test_a_placement_is_labelled_and_pinned_to_cores_of_its_own():
    assert Placement(1, 2).label == "1 process × 2 threads"
    assert Placement(2, 1, pin=True).label == "2 processes × 1 thread, pinned"
    assert placement.core_sets(Placement(2, 2)) == [None, None]
    if not placement.can_pin():
        pytest.skip("os.sched_setaffinity: Linux only")
    assert placement.core_sets(Placement(2, 1, pin=True), cores=[4, 7]) == [[4], [7]]
    assert placement.core_sets(Placement(1, 2, pin=True), cores=[4, 7]) == [[4, 7]]
    # more threads than cores: pinned workers share, wrapping round
    assert placement.core_sets(Placement(2, 2, pin=True), cores=[4, 7]) == [[4, 7], [4, 7]]
    assert placement.core_sets(Placement(3, 1, pin=True), cores=[4, 7]) == [[4], [7], [4]]


@pytest.mark.skipif(not placement.can_pin(), reason="os.sched_setaffinity: Linux only")
def test_workers_run_in_fresh_processes_on_the_cores_and_threads_asked(tmp_path):
    small = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)
    small.model.save_pretrained(tmp_path)
    cores = placement.available_cores()
    wanted = Placement(2, 1, pin=True)
    result = placement.worker_throughput(tmp_path, wanted, requests=5, seq_len=16, warmup=1)
    assert result["requests"] == 5 and len(result["latencies_ms"]) == 5  # 3 + 2: every request counted once
    assert [w["threads"] for w in result["workers"]] == [1, 1]
    assert [w["cores"] for w in result["workers"]] == placement.core_sets(wanted, cores)
    assert result["throughput_rps"] == pytest.approx(5 / result["seconds"])
    assert min(result["latencies_ms"]) > 0 and result["seconds"] >= max(result["latencies_ms"]) / 1000
    table = placement.placement_table({wanted.label: [result, result]})
    assert table.loc[wanted.label, "rounds"] == 2
    assert table.loc[wanted.label, "requests/s, median"] == pytest.approx(result["throughput_rps"])


def test_a_bad_model_folder_or_placement_is_refused_before_any_process_starts(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        placement.worker_throughput(tmp_path, Placement(1, 1), requests=2, seq_len=8)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="at least one process"):
        placement.worker_throughput(tmp_path, Placement(0, 1), requests=2, seq_len=8)
    with pytest.raises(ValueError, match="cannot be shared"):
        placement.worker_throughput(tmp_path, Placement(3, 1), requests=2, seq_len=8)


def test_a_worker_that_fails_is_reported_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    # a worker that dies before it is ready (the real one would, e.g., on a folder it cannot load)
    monkeypatch.setattr(placement, "WORKER_PROGRAM", "import sys; sys.exit('cannot load the model')")
    with pytest.raises(RuntimeError, match="did not start: cannot load the model"):
        placement.worker_throughput(tmp_path, Placement(1, 1), requests=1, seq_len=8)
    # a worker that is ready, then fails while answering
    monkeypatch.setattr(placement, "WORKER_PROGRAM", "import sys; print('@ready', flush=True); sys.stdin.readline(); "
                                                     "sys.exit('out of memory')")
    with pytest.raises(RuntimeError, match="failed: out of memory"):
        placement.worker_throughput(tmp_path, Placement(1, 1), requests=1, seq_len=8)


def test_the_placement_verdict_compares_medians_and_calls_overlapping_rounds_a_tie():
    table = pd.DataFrame({"requests/s, median": [10.0, 14.0, 10.5, 5.0],
                          "requests/s, min-max": ["9.5-10.5", "13.0-15.0", "10.2-11.0", "4.0-6.0"]},
                         index=["one", "replicas", "pinned", "oversubscribed"])
    text = placement.placement_verdict(table, baseline="one")
    assert "replicas: 1.40x;" in text and "oversubscribed: 0.50x" in text
    assert "pinned: 1.05x (within the rounds' spread: a tie)" in text
    assert "replicas: 1.40x (" not in text and text.endswith("Most requests per second: replicas.")
    with pytest.raises(KeyError, match="no placement"):
        placement.placement_verdict(table, baseline="missing")


def test_the_spin_probe_counts_cpu_time_spent_between_requests():
    def busy():  # a run that burns 20 ms of CPU
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass
    idle = placement.spin_probe(lambda: time.sleep(0.005), requests=4, gap_s=0.005)
    spun = placement.spin_probe(busy, requests=4, gap_s=0.005)
    assert len(idle["latencies_ms"]) == 4 and min(idle["latencies_ms"]) >= 5
    assert idle["cpu_ms_per_request"] < 5 <= 20 <= spun["cpu_ms_per_request"]
    assert 0 <= idle["busy_cores"] < spun["busy_cores"]
    runs = {"2 threads, spinning off": [idle], "2 threads, spinning on": [spun], "1 thread, spinning off": [idle]}
    table = placement.spin_table(runs)
    verdict = placement.spin_verdict(table)
    assert verdict.startswith("2 threads: spinning changed") and "1 thread:" not in verdict
    assert f"{table.loc['2 threads, spinning on', 'CPU ms per request']:.0f} ms against" in verdict
    with pytest.raises(ValueError, match="spinning on and off"):
        placement.spin_verdict(table.loc[["1 thread, spinning off"]])
    with pytest.raises(ValueError):
        placement.spin_probe(busy, requests=0, gap_s=0)


def test_the_batch_sweep_has_a_row_per_size_and_the_knee_is_where_throughput_levels(minilm):
    table = batching.batch_sweep(minilm.model, minilm.tokenizer, (1, 2), seq_len=8, runs=2, threads=1)
    assert list(table.index) == [1, 2]
    assert (table["texts/s"] == 1000 / table["ms per text"]).all()
    assert (table["tokens/s"] == table["texts/s"] * 8).all()
    assert table.loc[2, "ms per text"] == pytest.approx(table.loc[2, "batch latency, median (ms)"] / 2)
    fake = pd.DataFrame({"texts/s": [10.0, 17.0, 19.5, 20.0]}, index=[1, 2, 4, 8])
    assert batching.knee(fake) == 4 and batching.knee(fake, share=0.8) == 2
    with pytest.raises(ValueError, match="at least 1"):
        batching.batch_sweep(minilm.model, minilm.tokenizer, (0,), seq_len=8, runs=1, threads=1)
