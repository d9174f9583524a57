"""Lab 07: package the encoder for the two servers, run them, and measure what a deployment costs.

* :func:`prepare_context` writes a Docker build context: the server code (``app/``) and the
  model files both servers read (``model/``: an ONNX file, transformers weights, tokenizer).
* :class:`ServedApp` starts a server as its own process (uvicorn) and stops it cleanly.
* :func:`latency_summary`, :func:`dependency_footprint`, :func:`fresh_venv_footprint`:
  the numbers a deployment is judged by: tail latency and installed size.
* :func:`docker_engine`, :func:`image_size`, :func:`dockerfile_problems`: Docker where it runs,
  and a check of a Dockerfile that needs no engine.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from .hardware import Capability

APPS = {"pytorch": "torch_app", "onnxruntime": "onnx_app", "auto": "auto_app"}
ONNX_FILE = "encoder.onnx"
TORCH_DIR = "torch"


# --- the build context ------------------------------------------------------------------

def prepare_context(source: str | Path, dest: str | Path, encoder, *, onnx: bool = True) -> Path:
    """Write ``dest/app`` (a copy of the server folder ``source``) and ``dest/model`` for ``encoder``.

    ``model/`` holds ``encoder.onnx`` (one self-contained file, pooled embeddings out),
    ``torch/`` (``save_pretrained`` weights and config), ``tokenizer.json`` and
    ``serving.json`` (model name, embedding size, token limit, padding token).  ``onnx=False``
    leaves the ONNX file out (only the PyTorch server can then run: lab 08).
    """
    from .models import inputs_of_shape
    from .onnx_models import OUTPUT_NAME, export_onnx
    source, dest = Path(source), Path(dest)
    if not (source / "common.py").is_file():
        raise FileNotFoundError(f"{source} is not the serving folder (no common.py there)")
    app_dir, model_dir = dest / "app", dest / "model"
    if app_dir.exists():
        shutil.rmtree(app_dir)
    shutil.copytree(source, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "model"))
    model_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = encoder.model.eval(), encoder.tokenizer
    if onnx:
        export_onnx(model, inputs_of_shape(tokenizer, 2, 16), model_dir / ONNX_FILE, external_data=False)
    model.save_pretrained(model_dir / TORCH_DIR)
    tokenizer.backend_tokenizer.save(str(model_dir / "tokenizer.json"))
    positions = getattr(model.config, "max_position_embeddings", 512)
    max_tokens = min(int(tokenizer.model_max_length), 512, positions - 2 if model.config.model_type == "mpnet" else positions)
    config = {"model": encoder.name, "trained": bool(encoder.trained), "dim": int(model.config.hidden_size),
              "max_tokens": max_tokens, "pad_id": int(tokenizer.pad_token_id), "pad_token": tokenizer.pad_token,
              "onnx_file": ONNX_FILE, "onnx_output": OUTPUT_NAME, "torch_dir": TORCH_DIR}
    (model_dir / "serving.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest


def folder_size(path: str | Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# --- running a server -------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(app: str, port: int) -> list[str]:
    """The command that serves ``app`` ("pytorch" or "onnxruntime") with uvicorn on localhost."""
    if app not in APPS:
        raise ValueError(f"unknown app {app!r}: use one of {sorted(APPS)}")
    return [sys.executable, "-m", "uvicorn", f"{APPS[app]}:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-access-log"]


def server_env(context: str | Path, **extra: str) -> dict:
    """Environment for a server process: ``MODEL_DIR`` set, the course's Python first on PATH, and
    ``EMBED_THREADS`` the thread count this process gave torch (``helpers.use_threads`` in a lab's
    setup cell), so a server is timed with the same threads as everything else in the lab."""
    import torch
    env = dict(os.environ)
    env["MODEL_DIR"] = str(Path(context) / "model")
    env.setdefault("EMBED_THREADS", str(torch.get_num_threads()))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


class ServedApp:
    """One server process on localhost: ``with ServedApp("onnxruntime", context) as app: app.url``.

    Entering starts it and waits until ``/health`` answers (or the process dies, with its log
    in the error); leaving sends SIGTERM, which uvicorn handles as a graceful shutdown, and
    :attr:`exit_code` keeps the result.
    """

    def __init__(self, app: str, context: str | Path, *, startup_timeout: float = 180.0, **env: str):
        self.app, self.context = app, Path(context)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.env = server_env(context, **env)
        self.process: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.log_path = self.context / f"{app}-{self.port}.log"

    def spawn(self) -> "ServedApp":
        """Start the process and return at once, without waiting for it to answer (lab 08 polls it)."""
        self._log = open(self.log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen(server_command(self.app, self.port), cwd=self.context / "app",
                                        env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def __enter__(self) -> "ServedApp":
        import httpx
        start = time.perf_counter()
        self.spawn()
        deadline = start + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                raise RuntimeError(f"the {self.app} server exited with code {self.process.returncode} "
                                   f"before answering:\n{self.log()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"the {self.app} server did not answer /health within {self.startup_timeout:.0f} s")

    @property
    def shut_down_cleanly(self) -> bool:
        """uvicorn ran the app's shutdown and ended on the SIGTERM we sent (recent uvicorn re-raises it)."""
        return (self.exit_code in (0, -signal.SIGTERM)
                and "Application shutdown complete" in self.log() and "Traceback" not in self.log())

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; SIGKILL only if it does not stop in ``timeout`` seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.exit_code = self.process.returncode
        self._close_log()
        return self.exit_code

    def __exit__(self, *exc) -> None:
        self.stop()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None and not log.closed:
            log.close()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""


def stop_children(timeout: float = 5.0) -> list[int]:
    """Stop every process this Python process started that is still running; return their pids.

    A server started by hand and never stopped (an exercise half done, an interrupted cell)
    would outlive the notebook's kernel. Importing this module registers this function to run
    when the kernel exits, and lab 07 also calls it between experiments.
    """
    import psutil
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return [child.pid for child in children]


atexit.register(stop_children)


# --- what a deployment is judged by -----------------------------------------------------

def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Request latencies in milliseconds: p50, p95, p99, mean and max (numpy's linear percentiles)."""
    values = np.asarray(list(seconds), dtype=float)
    if values.size == 0:
        raise ValueError("latency_summary() needs at least one latency")
    if (values < 0).any() or not np.isfinite(values).all():
        raise ValueError("latencies must be finite, non-negative seconds")
    ms = values * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"requests": int(values.size), "p50 (ms)": float(p50), "p95 (ms)": float(p95),
            "p99 (ms)": float(p99), "mean (ms)": float(ms.mean()), "max (ms)": float(ms.max())}


def requirement_names(path: str | Path) -> list[str]:
    """Package names a requirements file lists (comments, options and hashes skipped)."""
    names = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("-", "\\")):
            continue
        names.append(re.split(r"[<>=!~\[; \\]", line, maxsplit=1)[0])
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_footprint(names: Sequence[str]) -> "pandas.DataFrame":  # noqa: F821
    """The installed size of ``names`` and everything they depend on, read from this environment.

    Walks each distribution's ``Requires-Dist`` (markers evaluated for this machine, extras
    such as ``cuda-toolkit[cublas]`` followed) and adds up the files its ``RECORD`` lists: what ``pip install`` of those names
    puts in a fresh virtual environment with these same versions, without installing anything.
    """
    import pandas as pd
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = default_environment()

    def wanted(req: Requirement, extras: set[str]) -> bool:
        if req.marker is None:
            return True
        return any(req.marker.evaluate({**env, "extra": extra}) for extra in {"", *extras})

    seen: dict[str, metadata.Distribution] = {}
    extras_of: dict[str, set[str]] = {}
    todo = [(_normalise(n), set()) for n in names]
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= extras_of[name]:
            continue
        extras_of[name] = extras_of.get(name, set()) | extras
        if name not in seen:
            try:
                seen[name] = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                raise RuntimeError(f"{name} is not installed in this environment, so its size cannot be read") from None
        for spec in seen[name].requires or []:
            req = Requirement(spec)
            if wanted(req, extras_of[name]):
                todo.append((_normalise(req.name), set(req.extras)))
    rows = []
    for name, dist in seen.items():
        size = 0
        for file in dist.files or []:
            located = Path(dist.locate_file(file))
            if located.is_file():
                size += located.stat().st_size
        rows.append({"package": dist.metadata["Name"], "version": dist.version, "MB": size / 1e6})
    table = pd.DataFrame(rows).sort_values("MB", ascending=False).set_index("package")
    return table


PACKAGED_SERVING = Path(__file__).resolve().parent / "serving"  # in a wheel: labs/07_deployment/serving
CHECKOUT_SERVING = Path(__file__).resolve().parent.parent / "labs" / "07_deployment" / "serving"  # editable install


def serving_dir(beside: str | Path = "serving") -> Path:
    """Lab 07's server folder: the one beside the notebook (a course checkout), else the copy the
    ``helpers`` wheel carries (Colab, where only the notebook is opened), else the one in the course
    checkout an editable install of ``helpers`` points at (a lab copied elsewhere, as the grader's
    tests do); a clear error otherwise."""
    for folder in (Path(beside), PACKAGED_SERVING, CHECKOUT_SERVING):
        if (folder / "common.py").is_file():
            return folder
    raise FileNotFoundError(f"no server folder: neither {Path(beside).resolve()} (run the notebook from its own "
                            f"folder, the one that holds serving/) nor a copy inside the helpers package")


def venv_python(where: str | Path, *, windows: bool | None = None) -> Path:
    """The interpreter of the virtual environment at ``where``: ``bin/python`` on Linux and
    macOS, ``Scripts\\python.exe`` on Windows (``windows``: default, this machine's OS)."""
    windows = (os.name == "nt") if windows is None else windows
    return Path(where) / ("Scripts" if windows else "bin") / ("python.exe" if windows else "python")


def fresh_venv_footprint(requirements: str | Path, where: str | Path, *, timeout: float = 900) -> dict:
    """Install ``requirements`` into a new virtual environment at ``where`` and measure it.

    Uses uv (``uv venv`` + ``uv pip install``) when it is on PATH, else ``python -m venv`` and
    pip. Returns the environment's size in MB and the install's wall time; the folder is kept
    for the caller to delete.
    """
    where = Path(where)
    start = time.perf_counter()
    uv = shutil.which("uv")
    if uv:
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(where)], check=True, timeout=timeout)
        cmd = [uv, "pip", "install", "--quiet", "--python", str(venv_python(where)), "-r", str(requirements)]
    else:
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=timeout)
        cmd = [str(venv_python(where)), "-m", "pip", "install", "--quiet", "-r", str(requirements)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"installing {requirements} failed:\n{run.stderr[-2000:]}")
    return {"MB": folder_size(where) / 1e6, "install seconds": time.perf_counter() - start,
            "installer": "uv" if uv else "pip"}


# --- Docker -----------------------------------------------------------------------------

def docker_engine() -> Capability:
    """Whether a Docker engine answers here (a client alone cannot build or run images)."""
    docker = shutil.which("docker")
    if docker is None:
        return Capability(False, "no `docker` command on this machine")
    try:
        run = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return Capability(False, "`docker info` did not answer within 20 s")
    if run.returncode != 0 or not run.stdout.strip():
        first = (run.stderr.strip().splitlines() or ["no answer"])[-1]
        return Capability(False, f"the docker client is here but no engine answers ({first})")
    return Capability(True, f"Docker engine {run.stdout.strip()}")


def image_size(tag: str) -> int:
    """An image's size in bytes, from ``docker image inspect``."""
    run = subprocess.run(["docker", "image", "inspect", tag, "--format", "{{.Size}}"], capture_output=True,
                         text=True, timeout=60)
    if run.returncode != 0:
        raise RuntimeError(f"docker image inspect {tag} failed: {run.stderr.strip()}")
    return int(run.stdout.strip())


def dockerfile_problems(dockerfile: str | Path, context: str | Path) -> list[str]:
    """What is wrong with a Dockerfile that a build would only find later; ``[]`` when nothing is.

    Parses it (``dockerfile-parse``) and checks that it has a ``FROM`` first and a ``CMD`` or
    ``ENTRYPOINT``, that every local ``COPY``/``ADD`` source exists in ``context``, and that
    every ``COPY --from`` names an earlier stage.
    """
    from dockerfile_parse import DockerfileParser

    if not Path(dockerfile).is_file():
        return [f"no Dockerfile at {dockerfile}"]
    with open(dockerfile, "rb") as handle:  # a file object: given a path, the parser wants a folder
        instructions = [i for i in DockerfileParser(fileobj=handle).structure if i["instruction"] != "COMMENT"]
    problems: list[str] = []
    commands = [i["instruction"] for i in instructions]
    if not commands or commands[0] != "FROM":
        problems.append("the first instruction must be FROM")
    if "CMD" not in commands and "ENTRYPOINT" not in commands:
        problems.append("no CMD or ENTRYPOINT: the image would not know what to run")
    stages: list[str] = []
    for inst in instructions:
        if inst["instruction"] == "FROM":
            words = inst["value"].split()
            if len(words) >= 3 and words[-2].lower() == "as":
                stages.append(words[-1])
            continue
        if inst["instruction"] not in ("COPY", "ADD"):
            continue
        words = inst["value"].split()
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if stage is not None:
            if stage not in stages:
                problems.append(f"line {inst['startline'] + 1}: COPY --from={stage} names no earlier stage")
            continue
        for src in paths[:-1]:
            if not (Path(context) / src).exists():
                problems.append(f"line {inst['startline'] + 1}: {inst['instruction']} source {src!r} "
                                f"is not in the build context {context}")
    return problems
