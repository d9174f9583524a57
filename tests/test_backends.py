"""Lab 09's machinery: the backend registry on this CPU, the selection and its reasons, the artifact
cache (corrupted and half-written entries, a second writer at the same time, forced rebuilds), the
command line's exit codes and messages, and the auto server's /health and /optimization, cold and
from the cache. Small shapes and the 2-layer smoke model: these test behaviour, never speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

import helpers
from conftest import REPO, venv_env
from helpers import artifacts, backend_cli, backends
from helpers import deployment as dep

SERVING = REPO / "solutions" / "07_deployment" / "serving"
SMALL = {"warmup": 1, "runs": 3, "batch_size": 4, "seq_len": 16, "threads": 1, "quality_pairs": 12}
SMALL_ENV = {"EMBED_WARMUP": "1", "EMBED_RUNS": "3", "EMBED_BATCH_SIZE": "4", "EMBED_SEQ_LEN": "16",
             "EMBED_QUALITY_PAIRS": "12", "EMBED_THREADS": "1"}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    encoder = helpers.load_encoder(helpers.SMOKE_MODEL, verbose=False)
    return dep.prepare_context(SERVING, tmp_path_factory.mktemp("auto"), encoder, onnx=False)


# --- the registry and its configuration ------------------------------------------------------

def test_the_registry_says_what_runs_on_this_cpu_and_why_not():
    assert backends.availability("eager", "fp32").ok
    assert backends.availability("onnxruntime", "fp32").ok
    assert backends.availability("torch-int8", "int8").ok
    assert not backends.availability("onnxruntime", "int8").ok
    if not __import__("torch").cuda.is_available():
        for name in ("tensorrt", "onnxruntime-cuda"):
            can = backends.availability(name, "fp32")
            assert not can.ok and "GPU" in can.reason, can
        fp16 = backends.availability("eager", "fp16")
        assert not fp16.ok and "GPU" in fp16.reason


def test_the_librarys_own_backends_name_the_extra_they_need(monkeypatch):
    """sentence-transformers' onnx and openvino backends need extras that pin an older transformers
    than the course's: without them each candidate says which extra, and where to read why."""
    monkeypatch.setattr(backends, "_importable", lambda module: module == "sentence_transformers")
    for name, extra, dist in (("st-onnx", "onnx", "optimum-onnx"), ("st-openvino", "openvino", "optimum-intel")):
        for precision in ("fp32", "int8"):
            can = backends.availability(name, precision)
            assert not can.ok and f"sentence-transformers[{extra}]" in can.reason and dist in can.reason, can
            assert "README" in can.reason
    monkeypatch.setattr(backends, "_importable", lambda module: True)
    for name in backends.LIBRARY_BACKENDS:
        assert "CPU" in backends._library_availability(name, "fp32", "cuda").reason
        assert not backends.availability(name, "fp16").ok
    monkeypatch.setattr(backends, "_importable", lambda module: module != "datasets")
    assert "datasets" in backends._library_availability("st-openvino", "int8", "cpu").reason


@pytest.mark.parametrize("machine, flags, preset", [
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "avx512_vnni"),
    ("x86_64", {"avx2", "avx512f"}, "avx2"),  # no VNNI: uint8 weights, not the int8 that saturated in lab 06
    ("x86_64", {"avx2", "avx_vnni"}, "avx512_vnni"),
    ("x86_64", {"avx2"}, "avx2"),
    ("aarch64", {"neon"}, "arm64"),
])
def test_the_quantization_preset_is_read_from_the_cpu(monkeypatch, machine, flags, preset):
    from helpers import hardware
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    monkeypatch.setattr(hardware, "cpu_features", lambda: {name: name in flags for name in hardware.CPU_FEATURES})
    assert hardware.ort_quantization_target() == preset


@pytest.mark.parametrize("backend", ["st-onnx", "st-openvino"])
def test_the_librarys_own_backends_build_run_and_pass_their_checks(context, tmp_path, backend):
    """Runs only where the extra is installed (its own environment, README): the library's fp32 and
    int8 exports are built and cached, their vectors match eager (fp32) or keep the quality floor
    (int8), and a second selection loads them from the cache."""
    can = backends.availability(backend, "fp32")
    if not can.ok:
        pytest.skip(f"{backend}: {can.reason}")
    settings = backends.Settings(candidates=("eager", backend), precision="int8", **SMALL)
    files = backends.ModelFiles.read(context / "model")
    first = backends.select(files, settings, artifacts.ArtifactCache(tmp_path / "cache"), progress=False)
    again = backends.select(files, settings, artifacts.ArtifactCache(tmp_path / "cache"), progress=False)
    for precision in ("fp32", "int8"):
        name = backends._name(backend, precision)
        row = next(r for r in first["candidates"] if r["candidate"] == name)
        assert not (row["reason"] or "").startswith(("unavailable", "build failed", "failed to run")), row["reason"]
        assert row["median (ms)"] > 0 and row["cosine mean"] > 0.5, row  # it ran, was timed and judged
        if precision == "fp32":  # fp32 must be eager's answers; int8's verdict depends on the model and the CPU
            assert row["parity (1 - cos)"] <= backends.TOLERANCE["fp32"], row
        assert next(r for r in again["candidates"] if r["candidate"] == name)["from cache"]


@pytest.mark.parametrize("env, variable", [
    ({"EMBED_BACKEND": "tensorrtx"}, "EMBED_BACKEND"),
    ({"EMBED_PRECISION": "fp8"}, "EMBED_PRECISION"),
    ({"EMBED_BACKEND": "onnxruntime", "EMBED_PRECISION": "int8"}, "EMBED_PRECISION"),
    ({"EMBED_BACKEND": "onnxruntime-int8"}, "EMBED_PRECISION"),
    ({"EMBED_WARMUP": "three"}, "EMBED_WARMUP"),
    ({"EMBED_WARMUP": "-1"}, "EMBED_WARMUP"),
    ({"EMBED_RUNS": "0"}, "EMBED_RUNS"),
    ({"EMBED_CANDIDATES": "eager,onnx"}, "EMBED_CANDIDATES"),
    ({"EMBED_COMPILE_MODE": "fast"}, "EMBED_COMPILE_MODE"),
    ({"EMBED_OPTIMIZE": "maybe"}, "EMBED_OPTIMIZE"),
    ({"EMBED_DEVICE": "tpu"}, "EMBED_DEVICE"),
])
def test_a_bad_setting_stops_with_the_variable_named(env, variable):
    with pytest.raises(backends.ConfigError, match=variable):
        backends.settings_from_env(env)


def test_settings_read_from_the_environment():
    s = backends.settings_from_env({"EMBED_BACKEND": "Torch-Int8", "EMBED_PRECISION": "int8", "EMBED_WARMUP": "0",
                                    "EMBED_RUNS": "7", "EMBED_CANDIDATES": "eager, onnxruntime"}, threads=3)
    assert (s.backend, s.precision, s.warmup, s.runs, s.threads) == ("torch-int8", "int8", 0, 7, 3)
    assert s.tried() == [("torch-int8", "int8")]
    auto = backends.settings_from_env({"EMBED_CANDIDATES": "eager,onnxruntime,torch-int8", "EMBED_PRECISION": "int8"})
    assert auto.tried() == [("eager", "fp32"), ("onnxruntime", "fp32"), ("torch-int8", "int8")]
    assert backends.settings_from_env({"EMBED_OPTIMIZE": "0"}).tried() == [("eager", "fp32")]
    assert backends.settings_from_env({}).tried() == [(b, "fp32") for b in backends.BACKENDS
                                                      if "fp32" in backends.BACKENDS[b].precisions]


# --- the selection -----------------------------------------------------------------------------

def test_selection_keeps_the_fastest_that_passed_and_a_reason_for_every_other(context, tmp_path, monkeypatch):
    real_build, real_load = backends.build_artifact, backends.load_runner

    def build(backend, precision, files, settings, folder):
        if backend == "onnxruntime":
            raise RuntimeError("exporter crashed")
        if backend in ("compile", "onnxruntime-int8"):
            return {}  # stand-ins below: no compile, no export in a unit test
        return real_build(backend, precision, files, settings, folder)

    def load(backend, precision, files, settings, folder):
        run = real_load("eager", "fp32", files, settings, folder)
        if backend == "compile":  # runs, but its answers drift
            return lambda ids, mask: run(ids, mask) + np.random.default_rng(0).normal(0, 0.05, (ids.shape[0], 384))
        if backend == "onnxruntime-int8":
            def crash(ids, mask):
                raise ValueError("int8 kernel missing")
            return crash
        return real_load(backend, precision, files, settings, folder)

    monkeypatch.setattr(backends, "build_artifact", build)
    monkeypatch.setattr(backends, "load_runner", load)
    settings = backends.Settings(candidates=("eager", "compile", "onnxruntime", "tensorrt", "onnxruntime-int8", "torch-int8"),
                                 precision="int8", **SMALL)
    files = backends.ModelFiles.read(context / "model")
    report = backends.select(files, settings, artifacts.ArtifactCache(tmp_path / "cache"), progress=False)
    reasons = report["rejected"]
    assert report["candidate"] in ("eager", "torch-int8") and report["candidate"] not in reasons
    assert reasons["onnxruntime"] == "build failed: RuntimeError: exporter crashed"
    assert reasons["compile"].startswith("parity failed: 1 - cosine") and "tolerance 1e-04" in reasons["compile"]
    assert reasons["onnxruntime-int8"] == "failed to run: ValueError: int8 kernel missing"
    assert reasons["tensorrt"].startswith("unavailable: ")
    loser = {"eager", "torch-int8"} - {report["candidate"]}
    assert all(reasons[name].startswith(("slower: ", "quality failed: ")) for name in loser), reasons
    speedup = report["speedup"]
    assert speedup["low"] <= speedup["median"] <= speedup["high"] and speedup["median"] > 0
    assert report["parity_error"] is not None and json.loads(json.dumps(report, default=str))["candidate"]
    assert [row["candidate"] for row in report["candidates"]] == list(settings.candidates)


def test_selection_with_nothing_that_passes_says_why(context, tmp_path):
    settings = backends.Settings(candidates=("tensorrt", "onnxruntime-cuda"), **SMALL)
    if backends.availability("tensorrt", "fp32").ok:
        pytest.skip("TensorRT runs here")
    with pytest.raises(RuntimeError, match="no candidate passed: tensorrt: unavailable"):
        backends.select(backends.ModelFiles.read(context / "model"), settings,
                        artifacts.ArtifactCache(tmp_path), progress=False)


def test_parity_error_fails_nan_and_wrong_shapes():
    ref = [np.eye(3)]
    assert backends.parity_error([np.eye(3) * 2], ref) < 1e-12
    assert backends.parity_error([np.eye(3) * np.nan], ref) == float("inf")
    assert backends.parity_error([np.eye(3)[:, :2]], ref) == float("inf")


# --- the artifact cache -------------------------------------------------------------------------

def _writer(text="artifact"):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "a.bin").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text("second file")
        return {"text": text}
    return build, calls


KEY = artifacts.cache_key("w" * 64, "onnxruntime", {"precision": "fp32"}, {"torch": "2.15"})


def test_an_entry_is_built_once_reused_and_rebuilt_on_force(tmp_path):
    cache = artifacts.ArtifactCache(tmp_path)
    build, calls = _writer()
    first = cache.get_or_build(KEY, build)
    again = cache.get_or_build(KEY, build)
    assert first.built and not again.built and again.info == {"text": "artifact"} and len(calls) == 1
    assert cache.get_or_build(KEY, build, force=True).built and len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY], "no temporary folder is left behind"


@pytest.mark.parametrize("damage, problem", [
    (lambda d: (d / "a.bin").write_text("artifacx"), "checksum"),
    (lambda d: (d / "a.bin").write_text("art"), "bytes"),
    (lambda d: (d / "sub" / "b.txt").unlink(), "missing"),
    (lambda d: (d / artifacts.MANIFEST).write_text("{ not json"), "unreadable"),
    (lambda d: (d / artifacts.MANIFEST).unlink(), "unreadable"),
])
def test_a_damaged_entry_is_rebuilt_never_loaded(tmp_path, damage, problem):
    cache = artifacts.ArtifactCache(tmp_path)
    build, calls = _writer()
    entry = cache.get_or_build(KEY, build)
    damage(entry.path)
    assert cache.check(KEY) is not None
    rebuilt = cache.get_or_build(KEY, build)
    assert rebuilt.built and len(calls) == 2 and problem in cache.problems[-1], cache.problems
    assert (rebuilt.path / "a.bin").read_text() == "artifact" and cache.check(KEY) is None


def test_an_entry_built_from_other_inputs_is_not_trusted(tmp_path):
    cache = artifacts.ArtifactCache(tmp_path)
    build, calls = _writer()
    cache.get_or_build(KEY, build, inputs={"weights": "a"})
    assert cache.get(KEY, inputs={"weights": "b"}) is None and "other inputs" in cache.problems[-1]


def test_a_failed_build_leaves_nothing_and_an_abandoned_one_is_swept(tmp_path):
    cache = artifacts.ArtifactCache(tmp_path)

    def broken(folder):
        (folder / "half.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.get_or_build(KEY, broken)
    assert list(tmp_path.iterdir()) == [] and cache.get(KEY) is None
    abandoned = tmp_path / ".tmp-0123456789ab-deadbeef"
    abandoned.mkdir()
    old = time.time() - 2 * artifacts.STALE_TEMP_S
    os.utime(abandoned, (old, old))
    cache.get_or_build(KEY, _writer()[0])
    assert not abandoned.exists() and cache.check(KEY) is None


WRITER = """
import sys, time
from pathlib import Path
from helpers.artifacts import ArtifactCache
def build(folder):
    (folder / "a.bin").write_text(sys.argv[3])
    time.sleep(1.0)  # both writers are inside their builds at the same time
    return {"writer": sys.argv[3]}
entry = ArtifactCache(sys.argv[1]).get_or_build(sys.argv[2], build)
print(entry.info["writer"], entry.built)
"""


def test_two_writers_at_once_leave_one_valid_entry(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), KEY, name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=venv_env()) for name in ("one", "two")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    winners = {out.split()[0] for out, _ in outs}
    assert len(winners) == 1, f"both writers must end with the same entry: {outs}"
    cache = artifacts.ArtifactCache(tmp_path)
    assert cache.check(KEY) is None and sorted(p.name for p in tmp_path.iterdir()) == [KEY]
    assert (tmp_path / KEY / "a.bin").read_text() == winners.pop()


def test_the_cache_key_changes_with_each_input_and_ignores_dict_order():
    base = ("w" * 64, "compile", {"mode": "default", "threads": 2}, {"torch": "2.15", "cpu_features": "avx2"})
    key = artifacts.cache_key(*base)
    assert key == artifacts.cache_key(base[0], base[1], {"threads": 2, "mode": "default"},
                                      {"cpu_features": "avx2", "torch": "2.15"})
    changed = [("v" * 64, *base[1:]), (base[0], "eager", *base[2:]),
               (*base[:2], {"mode": "max-autotune", "threads": 2}, base[3]),
               (*base[:2], {"mode": "default", "threads": 1}, base[3]),
               (*base[:3], {"torch": "2.16", "cpu_features": "avx2"}),
               (*base[:3], {"torch": "2.15", "cpu_features": "avx2 avx512f"})]
    keys = {artifacts.cache_key(*args) for args in changed}
    assert key not in keys and len(keys) == len(changed)


def test_the_environment_facts_name_what_invalidates_an_artifact():
    facts = artifacts.environment_facts("cpu", 3)
    assert facts["threads"] == 3 and facts["torch"] and facts["onnxruntime"] and "cpu_features" in facts


# --- the command line --------------------------------------------------------------------------

def test_cli_exit_codes_and_messages(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMBED_BACKEND", "tensorrtx")
    assert backend_cli.main(["optimize", "--model-dir", str(tmp_path)]) == backend_cli.EXIT_USAGE
    assert "EMBED_BACKEND='tensorrtx' is not a backend" in capsys.readouterr().err
    monkeypatch.delenv("EMBED_BACKEND")
    assert backend_cli.main(["benchmark", "--model-dir", str(tmp_path), "--batch-sizes", "1,0"]) == backend_cli.EXIT_USAGE
    assert "--batch-sizes" in capsys.readouterr().err
    assert backend_cli.main(["optimize", "--threads", "0", "--model-dir", str(tmp_path)]) == backend_cli.EXIT_USAGE
    assert "--threads must be 1 or more" in capsys.readouterr().err
    assert backend_cli.main(["optimize", "--model-dir", str(tmp_path / "nowhere"),
                             "--cache-dir", str(tmp_path / "c")]) == backend_cli.EXIT_FAILED
    assert "not a model folder" in capsys.readouterr().err
    monkeypatch.delenv("MODEL_DIR", raising=False)
    assert backend_cli.main(["optimize", "--cache-dir", str(tmp_path / "c")]) == backend_cli.EXIT_USAGE
    assert "--model-dir" in capsys.readouterr().err


def test_cli_runs_as_a_module_with_help_and_argparse_errors():
    run = subprocess.run([sys.executable, "-m", "helpers.backend_cli", "--help"], capture_output=True, text=True,
                         timeout=120, env=venv_env())
    assert run.returncode == 0 and "optimize" in run.stdout and "benchmark" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "helpers.backend_cli", "optimize", "--backend", "bogus"],
                         capture_output=True, text=True, timeout=120, env=venv_env())
    assert bad.returncode == 2 and "invalid choice: 'bogus'" in bad.stderr


def test_cli_optimize_then_benchmark_compare(context, tmp_path, capsys):
    common = ["--model-dir", str(context / "model"), "--cache-dir", str(tmp_path), "--candidates", "eager,torch-int8",
              "--precision", "int8", "--runs", "3", "--warmup", "1", "--batch-size", "4", "--seq-len", "16",
              "--pairs", "12", "--threads", "1", "--quiet"]
    assert backend_cli.main(["optimize", *common]) == backend_cli.EXIT_OK
    out = capsys.readouterr().out
    assert "chosen: " in out and "(built," in out and "eager fp32" in out
    assert backend_cli.main(["optimize", *common]) == backend_cli.EXIT_OK
    assert "(cache," in capsys.readouterr().out
    assert backend_cli.main(["benchmark", "--compare", "--batch-sizes", "1,2", "--num-texts", "8", *common]) == 0
    table = capsys.readouterr().out
    assert "texts/s" in table and "p95 (ms)" in table and "speedup vs eager" in table
    assert table.count("torch-int8") >= 2 and backends.REFERENCE in table


# --- the server ----------------------------------------------------------------------------------

def test_auto_server_reports_a_measured_choice_cold_then_from_the_cache(context, tmp_path):
    env = {**SMALL_ENV, "EMBED_CACHE_DIR": str(tmp_path), "EMBED_CANDIDATES": "eager,torch-int8,tensorrt",
           "EMBED_PRECISION": "int8"}
    seen = []
    for _ in range(2):
        with dep.ServedApp("auto", context, **env) as app:
            health = httpx.get(app.url + "/health", timeout=10).json()
            report = httpx.get(app.url + "/optimization", timeout=10).json()
            reply = httpx.post(app.url + "/embed", json={"texts": ["a question", "an answer"]}, timeout=60)
        assert app.shut_down_cleanly, app.log()[-2000:]
        seen.append(health["artifact"])
        assert health["status"] == "ok" and health["model_loaded"] and health["backend_in_use"] == report["candidate"]
        assert health["device"] == report["device"]
        assert report["candidate"] in ("eager", "torch-int8")
        assert report["rejected"]["tensorrt"].startswith("unavailable") or backends.availability("tensorrt", "fp32").ok
        assert report["speedup"]["low"] <= report["speedup"]["median"] <= report["speedup"]["high"]
        assert {"parity_error", "quality", "settings", "environment", "select_s", "start_s"} <= set(report)
        vectors = np.array(reply.json()["embeddings"])
        assert reply.status_code == 200 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert seen == ["built", "cache"]


def test_auto_server_with_a_bad_setting_stops_and_says_which(context, tmp_path):
    with pytest.raises(RuntimeError, match="EMBED_PRECISION='fp8'"):
        with dep.ServedApp("auto", context, EMBED_PRECISION="fp8", EMBED_CACHE_DIR=str(tmp_path)):
            pass
