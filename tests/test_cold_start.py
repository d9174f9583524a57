"""helpers.cold_start: the child program reports stages in order, failures and hangs; the strategies
give the reference answer; the tables add up."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping

import pytest

from helpers import cold_start
from helpers.cold_start import CHILD_PROGRAM, SPAWNED_ENV, stage_times

# The parent's side of the stage timer lives here, not in helpers: it is the lab's exercise 8.1,
# and students get helpers.  These tests check the child's protocol through it.


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_stages(stages: Mapping[str, str], *, timeout: float = 300, env: Mapping[str, str] | None = None,
               cwd: str | os.PathLike | None = None) -> dict[str, float]:
    """Run ``stages`` ({name: code}) in a fresh interpreter; return {stage: seconds}.

    The first entry is ``interpreter start``.  A stage that raises ends the run with a
    ``RuntimeError`` naming the stage and the child's last error line; a run that takes longer
    than ``timeout`` seconds is killed and reported the same way (never a hang).
    """
    names = list(stages)
    child_env = dict(os.environ if env is None else env)
    child_env[SPAWNED_ENV] = repr(time.time())
    args = [sys.executable, "-c", CHILD_PROGRAM, json.dumps(list(stages.items()))]
    try:
        run = subprocess.run(args, env=child_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        done = stage_times(_text(exc.stdout))
        running = next((name for name in names if name not in done), "?")
        raise RuntimeError(f"stage {running!r} did not finish within the start's {timeout:g} s limit "
                           f"(finished: {', '.join(done) or 'nothing'})") from None
    times = stage_times(run.stdout)
    if run.returncode != 0:
        failed = next((name for name in names if name not in times), "interpreter start")
        lines = run.stderr.strip().splitlines()
        raise RuntimeError(f"stage {failed!r} failed (exit code {run.returncode}): "
                           f"{lines[-1] if lines else 'no error message'}")
    return times


def test_stages_run_in_order_in_one_fresh_namespace():
    times = run_stages({"a": "x = 2", "b": "import sys\nassert 'torch' not in sys.modules\ny = x * 3",
                                   "c": "import time\ntime.sleep(0.2)\nassert y == 6"}, timeout=60)
    assert list(times) == ["interpreter start", "a", "b", "c"]
    assert 0.19 <= times["c"] < 1.0 and 0 <= times["interpreter start"] < 10


def test_a_failing_stage_is_named_with_its_error():
    with pytest.raises(RuntimeError, match=r"stage 'boom' failed.*ValueError: bad file"):
        run_stages({"ok": "a = 1", "boom": "raise ValueError('bad file')", "after": "b = 2"})


def test_a_hanging_start_is_killed_within_its_timeout():
    began = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"stage 'hang' did not finish.*finished: interpreter start, first"):
        run_stages({"first": "a = 1", "hang": "import time\ntime.sleep(60)"}, timeout=2)
    assert time.perf_counter() - began < 15


def test_strategies_are_checked_and_share_their_request_stages(tmp_path):
    with pytest.raises(ValueError, match="unknown start strategy"):
        cold_start.start_stages("pickle", tmp_path, threads=1, batch_size=1, seq_len=8, out=tmp_path / "v.pt")
    for strategy in cold_start.STRATEGIES:
        stages = cold_start.start_stages(strategy, tmp_path, threads=1, batch_size=2, seq_len=8, out=tmp_path / "v.pt")
        assert list(stages)[0] == "import torch" and list(stages)[-3:] == [
            "warm-up (1 x 8 tokens)", "first request", "second request"]
        assert ("import transformers" in stages) == (strategy != "TorchScript archive")


def test_tables_totals_and_verdict_come_from_the_stage_times():
    runs = {"s1": [{"interpreter start": 0.0, "import torch": 1.0, "build": 0.5, "first request": 0.5, "second request": 9.0},
                   {"interpreter start": 0.0, "import torch": 3.0, "build": 0.5, "first request": 0.5, "second request": 9.0}],
            "s2": [{"interpreter start": 0.0, "import torch": 1.0, "first request": 1.0, "second request": 1.0}]}
    table = cold_start.stage_table(runs)
    assert table.loc[("s1", "import torch"), "median (s)"] == 2.0
    assert table.loc[("s1", "import torch"), "p25 (s)"] == 1.5 and table.loc[("s1", "import torch"), "p75 (s)"] == 2.5
    totals = cold_start.totals(runs)
    assert totals.loc["s1", "to first answer, median (s)"] == 3.0  # the second request is not part of the start
    assert totals.loc["s2", "to first answer, median (s)"] == 2.0
    verdict = cold_start.stage_verdict(table)
    assert "s1: its stage medians add up to 3.00 s to the first answer; the largest stage is 'import torch' (2.00 s, 67 %)" in verdict


def test_every_strategy_starts_and_gives_the_reference_answer(tmp_path):
    """The lab's smoke run leaves meta + safetensors out; this runs each strategy once, as the full profile does."""
    import torch

    import helpers
    small = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)  # a copy of its own: the session's MiniLM stays whole
    cold_start.write_model_files(small, tmp_path, batch_size=2, seq_len=16)
    reference = cold_start.reference_embedding(small, seq_len=16)
    for strategy in cold_start.STRATEGIES:
        out = tmp_path / f"{len(strategy)}.pt"
        times = run_stages(cold_start.start_stages(strategy, tmp_path, threads=1, batch_size=2,
                                                              seq_len=16, out=out), timeout=300)
        assert "first request" in times
        assert float(torch.dot(torch.load(out), reference)) > 0.9999, strategy


def test_int8_weights_are_a_quarter_of_the_bytes_and_dequantize_within_one_step():
    import torch
    torch.manual_seed(0)
    state = {"layer.weight": torch.randn(8, 16), "layer.bias": torch.randn(8), "ids": torch.arange(4)}
    small = cold_start.int8_weights(state)
    assert small["layer.weight"].dtype == torch.int8 and small["layer.bias"].dtype == torch.float32
    assert torch.equal(small["ids"], state["ids"])
    back = cold_start.dequantized(small)
    assert set(back) == set(state)
    step = small["layer.weight.int8_scale"]
    assert torch.all((back["layer.weight"] - state["layer.weight"]).abs() <= step / 2 + 1e-7)


def test_compiled_starts_share_a_cache_folder_and_the_cold_one_saves_the_portable_artifacts(tmp_path):
    """The full profile's compiled starts (the smoke run leaves them out).  The cold start runs here: it compiles,
    answers right and saves the portable artifacts.  The warm start is its code without the save (run again on the
    folder it filled), and the portable start points at an empty folder and loads those artifacts first; running
    them too would cost this suite another fresh process and compile each."""
    import torch

    import helpers
    from helpers.compilation import seed_cpu_check
    from helpers.models import keep_first_layers
    with pytest.raises(ValueError, match="needs compile_dir"):
        cold_start.start_stages("compiled, cold cache", tmp_path, threads=1, batch_size=1, seq_len=8, out=tmp_path / "v.pt")
    compile_dir = tmp_path / "compile"

    def stages(strategy):
        return cold_start.start_stages(strategy, tmp_path, threads=1, batch_size=1, seq_len=8,
                                       out=tmp_path / "v.pt", compile_dir=compile_dir)

    cold, warm, portable = (stages(s) for s in cold_start.COMPILED_STRATEGIES)
    assert {k: v for k, v in cold.items() if not k.startswith("save")} == warm
    assert str(compile_dir / "disk") in warm["import torch"] and str(compile_dir / "fresh") in portable["import torch"]
    assert "artifacts.bin" in portable["load cache artifacts"] and list(portable).index("load cache artifacts") < \
        list(portable).index("warm-up (1 x 8 tokens)")
    small = keep_first_layers(helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False), 1)
    cold_start.write_model_files(small, tmp_path, batch_size=1, seq_len=8)
    seed_cpu_check(compile_dir / "disk")  # Inductor's once-per-machine CPU check, copied in: this test times nothing
    times = run_stages(cold, timeout=300)
    assert list(times)[-3:] == ["first request", "second request", "save cache artifacts (image build)"]
    assert float(torch.dot(torch.load(tmp_path / "v.pt"), cold_start.reference_embedding(small, seq_len=8))) > 0.9999
    assert (compile_dir / "artifacts.bin").stat().st_size > 0, "the cold start saved no portable artifacts"
