"""Lab 07's two servers: both start, answer, agree, reject bad input with a 4xx, and shut down cleanly;
the ONNX Runtime one runs without PyTorch; the Dockerfiles parse and copy only files that exist."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import REPO
from helpers import deployment as dep

SERVING = REPO / "solutions" / "07_deployment" / "serving"
TOLERANCE = 1e-4  # the lab's stated tolerance between the two servers' embeddings
TEXTS = ["How do I make a model faster at inference?", "Pinned memory speeds up host-to-device copies.",
         "short"]


@pytest.fixture(scope="module")
def context(minilm, tmp_path_factory):
    return dep.prepare_context(SERVING, tmp_path_factory.mktemp("deploy"), minilm)


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """A folder whose `torch` package refuses to import: put first on PYTHONPATH, it proves torch is unused."""
    folder = tmp_path_factory.mktemp("no-torch")
    (folder / "torch").mkdir()
    (folder / "torch" / "__init__.py").write_text('raise ImportError("this server must run without PyTorch")\n')
    return folder


@pytest.fixture(scope="module")
def servers(context, no_torch):
    """Both servers, started once for the module; stopped (and their shutdown recorded) at the end."""
    onnx = dep.ServedApp("onnxruntime", context, PYTHONPATH=str(no_torch))
    torch_app = dep.ServedApp("pytorch", context, EMBED_COMPILE="0")
    with onnx, torch_app:
        yield {"onnxruntime": onnx, "pytorch": torch_app}


def _embed(app, payload):
    return httpx.post(app.url + "/embed", json=payload, timeout=60)


@pytest.mark.parametrize("name", ["onnxruntime", "pytorch"])
def test_each_server_reports_health_and_returns_unit_embeddings(servers, name):
    health = httpx.get(servers[name].url + "/health").json()
    assert health["status"] == "ok" and health["backend"] == name and health["dim"] == 384
    reply = _embed(servers[name], {"texts": TEXTS})
    assert reply.status_code == 200, reply.text
    vectors = np.array(reply.json()["embeddings"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["onnxruntime", "pytorch"])
def test_a_fixed_backend_server_has_no_optimization_report(servers, name):
    reply = httpx.get(servers[name].url + "/optimization")
    assert reply.status_code == 404 and "fixed backend" in reply.json()["detail"]


def test_both_servers_agree_and_match_the_course_embeddings(servers, minilm):
    import helpers
    got = {name: np.array(_embed(app, {"texts": TEXTS}).json()["embeddings"]) for name, app in servers.items()}
    assert np.abs(got["onnxruntime"] - got["pytorch"]).max() < TOLERANCE
    reference = helpers.encode(minilm, TEXTS).numpy()
    assert np.abs(got["pytorch"] - reference).max() < TOLERANCE


BAD_REQUESTS = {
    "empty body": None,
    "not JSON": b"texts=hello",
    "texts is a string": {"texts": "hello"},
    "a text is a number": {"texts": ["fine", 3]},
    "no texts": {"texts": []},
    "blank text": {"texts": ["   "]},
    "unknown field": {"texts": ["a"], "normalize": False},
    "too many texts": {"texts": ["a"] * 65},
    "far beyond the model's length": {"texts": ["inference " * 5000]},
}


@pytest.mark.parametrize("name", ["onnxruntime", "pytorch"])
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(servers, name, case):
    app, payload = servers[name], BAD_REQUESTS[case]
    if payload is None or isinstance(payload, bytes):
        reply = httpx.post(app.url + "/embed", content=payload or b"",
                           headers={"content-type": "application/json"}, timeout=60)
    else:
        reply = _embed(app, payload)
    assert 400 <= reply.status_code < 500, (case, reply.status_code, reply.text)
    assert reply.json()["detail"], "the error says what was wrong"
    assert _embed(app, {"texts": ["still alive?"]}).status_code == 200


def test_a_too_long_text_is_rejected_with_its_token_count(servers):
    reply = _embed(servers["onnxruntime"], {"texts": ["ok", "inference " * 600]})
    assert reply.status_code == 422
    assert "text 1 has" in reply.json()["detail"] and "512 tokens" in reply.json()["detail"]


def test_servers_shut_down_cleanly_on_sigterm(context):
    app = dep.ServedApp("onnxruntime", context)
    with app:
        assert _embed(app, {"texts": ["bye"]}).status_code == 200
    assert app.shut_down_cleanly, (app.exit_code, app.log()[-1000:])


def _context_without_model(context, folder):
    """The ONNX server's code with an empty model folder: a start that must fail."""
    (folder / "app").mkdir(parents=True)
    for file in ("common.py", "onnx_app.py"):
        (folder / "app" / file).write_text((context / "app" / file).read_text())
    (folder / "model").mkdir()  # no model files
    return folder


def test_a_server_that_cannot_start_says_why(context, tmp_path):
    broken = _context_without_model(context, tmp_path / "broken")
    with pytest.raises(RuntimeError, match="exited with code"):
        with dep.ServedApp("onnxruntime", broken, startup_timeout=60):
            pass


@pytest.mark.parametrize("dockerfile", ["Dockerfile.onnx", "Dockerfile.torch", "Dockerfile.bad"])
def test_dockerfiles_parse_and_copy_only_files_that_exist(context, dockerfile):
    assert dep.dockerfile_problems(context / "app" / dockerfile, context) == []


def test_dockerfile_check_finds_missing_files_and_stages(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim AS build\nFROM python:3.11-slim\nCOPY --from=builder /opt /opt\n"
                   "COPY app/missing.py ./\nCMD [\"python\"]\n")
    problems = dep.dockerfile_problems(bad, tmp_path)
    assert any("--from=builder" in p for p in problems) and any("missing.py" in p for p in problems)
    (tmp_path / "NoCmd").write_text("RUN echo hi\n")
    assert len(dep.dockerfile_problems(tmp_path / "NoCmd", tmp_path)) == 2


def test_good_dockerfiles_keep_the_practices_the_lab_teaches():
    for name, app in (("Dockerfile.onnx", "onnx_app"), ("Dockerfile.torch", "torch_app")):
        text = (SERVING / name).read_text()
        assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, f"{name}: multi-stage"
        assert "-slim" in text and "\nUSER app" in text and "--require-hashes" in text and "HEALTHCHECK" in text
        assert "COPY . " not in text and f"{app}:app" in text


def test_torch_image_installs_torch_alone_and_its_dependencies_from_the_hashed_lock():
    """torch comes from PyTorch's CPU index with --no-deps; everything it needs is in the hashed lock."""
    from packaging.requirements import Requirement
    locked = {dep._normalise(line.split("==")[0]) for line in (SERVING / "requirements-torch.txt").read_text().splitlines()
              if "==" in line and not line.startswith(" ")}
    needed = set()
    for text in metadata.requires("torch") or []:
        req = Requirement(text)
        name = dep._normalise(req.name)
        if (req.marker and "extra" in str(req.marker)) or name.startswith(("nvidia-", "cuda-", "triton")):
            continue  # optional extras, and the CUDA stack the CPU wheel does not have
        needed.add(name)
    assert needed and needed <= locked, f"torch's dependencies missing from the lock: {sorted(needed - locked)}"
    torch_line = [line for line in (SERVING / "Dockerfile.torch").read_text().splitlines()
                  if line.startswith("RUN") and "torch==" in line]
    assert len(torch_line) == 1 and "--no-deps" in torch_line[0] and "download.pytorch.org/whl/cpu" in torch_line[0]


@pytest.mark.parametrize("app", ["onnx", "torch"])
def test_locked_requirements_match_the_course_environment(app):
    """The apps' lock files pin the versions the course (uv.lock) installs, so tests run what ships."""
    pins = {}
    for line in (SERVING / f"requirements-{app}.txt").read_text().splitlines():
        if "==" in line and not line.startswith(" "):
            name, version = line.split(" ")[0].split("==")
            pins[name] = version
    listed = {dep._normalise(n) for n in dep.requirement_names(SERVING / f"requirements-{app}.in")}
    assert listed <= set(pins), "every top-level requirement is locked"
    assert "torch" not in pins and not any(name.startswith("nvidia-") for name in pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, f"{name}: locked {version}, course has {metadata.version(name)}"


def test_footprints_follow_dependencies_and_leave_torch_out_of_the_onnx_app():
    onnx = dep.dependency_footprint(dep.requirement_names(SERVING / "requirements-onnx.in"))
    assert {"onnxruntime", "tokenizers", "fastapi", "starlette", "numpy"} <= {n.lower() for n in onnx.index}
    assert "torch" not in {n.lower() for n in onnx.index}
    torch_app = dep.dependency_footprint(["torch", *dep.requirement_names(SERVING / "requirements-torch.in")])
    assert torch_app["MB"].sum() > onnx["MB"].sum() > 0
    with pytest.raises(RuntimeError, match="not installed"):
        dep.dependency_footprint(["no-such-package-here"])


def test_latency_summary_percentiles():
    summary = dep.latency_summary([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert summary["requests"] == 100 and summary["max (ms)"] == pytest.approx(100)
    assert summary["p50 (ms)"] == pytest.approx(50.5) and summary["p99 (ms)"] == pytest.approx(99.01)
    with pytest.raises(ValueError):
        dep.latency_summary([])
    with pytest.raises(ValueError):
        dep.latency_summary([0.1, float("nan")])


def test_the_no_torch_guard_is_real(context, no_torch):
    """The guard used above stops a server that does import torch (so the ONNX server's pass means something)."""
    with pytest.raises(RuntimeError, match="must run without PyTorch"):
        with dep.ServedApp("pytorch", context, startup_timeout=60, PYTHONPATH=str(no_torch)):
            pass


def test_stop_children_stops_what_this_process_started():
    """In a process of its own: here it would also stop the servers other tests of this worker share."""
    import subprocess
    import sys
    code = ("import subprocess, sys\nfrom helpers import deployment as dep\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid in dep.stop_children(timeout=5), child.wait(timeout=5) is not None)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["True", "True"], (run.stdout, run.stderr[-2000:])


def test_venv_python_is_where_each_os_puts_it(tmp_path):
    import venv

    from helpers.deployment import venv_python
    assert venv_python(tmp_path, windows=False) == tmp_path / "bin" / "python"
    assert venv_python(tmp_path, windows=True) == tmp_path / "Scripts" / "python.exe"
    venv.create(tmp_path / "env", with_pip=False)
    assert venv_python(tmp_path / "env").is_file(), "this machine's venv layout"


def test_serving_dir_falls_back_to_the_copy_inside_the_package(tmp_path, monkeypatch):
    """On Colab only the notebook is opened: lab 07 then uses the servers the helpers wheel carries."""
    from helpers import deployment
    monkeypatch.chdir(tmp_path)
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "common.py").write_text("")
    assert dep.serving_dir() == Path("serving"), "a checkout's own folder comes first"
    (tmp_path / "serving" / "common.py").unlink()
    packaged = tmp_path / "site" / "helpers" / "serving"
    packaged.mkdir(parents=True)
    (packaged / "common.py").write_text("")
    monkeypatch.setattr(deployment, "PACKAGED_SERVING", packaged)
    assert dep.serving_dir() == packaged
    monkeypatch.setattr(deployment, "PACKAGED_SERVING", tmp_path / "nowhere")
    assert dep.serving_dir() == REPO / "labs" / "07_deployment" / "serving", "an editable install: its checkout's copy"
    monkeypatch.setattr(deployment, "CHECKOUT_SERVING", tmp_path / "nowhere either")
    with pytest.raises(FileNotFoundError, match="run the notebook from its own folder"):
        dep.serving_dir()


def test_the_wheel_carries_lab_07s_servers(tmp_path):
    import shutil
    import subprocess
    import zipfile
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    run = subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path), str(REPO)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    served = {p.name for p in (REPO / "labs" / "07_deployment" / "serving").iterdir() if p.is_file()}
    assert {f"helpers/serving/{name}" for name in served} <= names
    assert not [n for n in names if n.startswith(("solutions/", "tests/"))]


def test_a_background_start_says_where_it_is_and_refuses_requests_until_ready(context):
    """The PyTorch server: its load takes seconds, so the first health check meets it loading."""
    from helpers import cold_start
    seen = cold_start.watch_server_start("pytorch", context, EMBED_COMPILE="0", EMBED_READINESS="background")
    assert seen["failed"] is None, seen
    assert seen["port_open_s"] < seen["ready_s"] <= seen["first_answer_s"]
    assert seen["states"][0][1] == "loading" and seen["states"][-1][1] == "ready", seen["states"]
    assert seen["embed_before_ready"][0] == 503, seen


def test_a_background_start_that_fails_stays_up_and_reports_the_error(context, tmp_path):
    from helpers import cold_start
    broken = _context_without_model(context, tmp_path / "broken-bg")
    seen = cold_start.watch_server_start("onnxruntime", broken, timeout=60, EMBED_READINESS="background")
    assert seen["ready_s"] is None and "FileNotFoundError" in seen["failed"] and "serving.json" in seen["failed"], seen
    assert seen["states"][-1][1] == "failed" and seen["embed_before_ready"][-1] == 503



def _serving_common():
    import importlib.util
    spec = importlib.util.spec_from_file_location("serving_common", SERVING / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_servers_take_their_thread_count_from_the_setting_or_the_container_quota(tmp_path, monkeypatch):
    common = _serving_common()
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert common.cpu_threads({"EMBED_THREADS": "3"}, tmp_path) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="EMBED_THREADS"):
            common.cpu_threads({"EMBED_THREADS": bad}, tmp_path)
    assert common.cpu_threads({}, tmp_path) == 8  # no cgroup files: the CPUs this process may use
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert common.cpu_threads({}, tmp_path) == 8  # cgroup v2, no quota
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert common.cpu_threads({}, tmp_path) == 2  # 1.5 CPUs: rounded up
    (tmp_path / "cpu.max").write_text("1600000 100000\n")
    assert common.cpu_threads({}, tmp_path) == 8  # a quota above the CPUs it may run on
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert common.cpu_threads({}, tmp_path) == 1  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert common.cpu_threads({}, tmp_path) == 8


def test_servers_report_the_threads_the_lab_gave_them(servers):
    import torch
    for name in ("onnxruntime", "pytorch"):
        variant = httpx.get(servers[name].url + "/health").json()["variant"]
        assert f"{torch.get_num_threads()} threads" in variant, variant
