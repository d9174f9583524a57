"""What both embedding servers share: the request format, its validation, tokenization and the HTTP app.

No PyTorch here: the ONNX Runtime server must run without it.  ``EMBED_READINESS`` chooses how a
server starts: ``before-serving`` (default) loads and warms up the model before uvicorn opens the
port, so nothing answers until it is ready; ``background`` opens the port at once and loads in a
thread, ``GET /health`` answering 503 with the stage it is in (``loading`` -> ``warming`` ->
``ready``, or ``failed`` with the error) and ``POST /embed`` 503 until ready (lab 08).  Lab 10 passes a
``batcher_factory``: requests are then queued and run together, batch by batch, instead of one
forward pass per request under a lock.  Each server supplies one
function, ``load(model_dir, config) -> (embed, description)``, where ``embed(input_ids,
attention_mask)`` takes int64 arrays of shape (batch, tokens) and returns unit-length float32
sentence embeddings of shape (batch, dim).  A loader may return a third item, a JSON-able report
of how its backend was chosen (lab 09's ``auto_app``): ``GET /optimization`` serves it, and
``/health`` names the backend in use and whether it came from the cache.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from tokenizers import Tokenizer

MAX_TEXTS = 64        # sentences per request
MAX_CHARS = 20_000    # per sentence: a cheap guard before tokenizing (the token limit is the real one)

Embed = Callable[[np.ndarray, np.ndarray], np.ndarray]
Loader = Callable[[Path, dict], tuple[Embed, str]]


class EmbedRequest(BaseModel):
    """``{"texts": ["a sentence", ...]}``: 1 to 64 non-empty strings; nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[Annotated[str, StringConstraints(max_length=MAX_CHARS)]] = Field(min_length=1, max_length=MAX_TEXTS)

    @field_validator("texts")
    @classmethod
    def _no_blank_texts(cls, texts: list[str]) -> list[str]:
        blank = [i for i, text in enumerate(texts) if not text.strip()]
        if blank:
            raise ValueError(f"texts {blank} are empty or whitespace; every text needs some words")
        return texts


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


def cpu_threads(env: dict | None = None, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """How many threads the model may use: ``$EMBED_THREADS`` if set, else the CPUs this process may
    run on, capped by the container's CPU quota.

    ``os.cpu_count()`` reports the host's cores, not a container's share: a container limited to
    2 CPUs on a 64-core host (``docker run --cpus 2``, a Kubernetes CPU limit) would otherwise start
    64 threads per forward pass and spend its quota switching between them. The quota is read from
    cgroup v2's ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max ..."``: none) or cgroup v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``, rounded up.
    """
    env = os.environ if env is None else env
    if env.get("EMBED_THREADS", "").strip():
        value = env["EMBED_THREADS"].strip()
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"EMBED_THREADS={value!r}: use a whole number of threads, 1 or more")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        limit, period = (cgroup / "cpu.max").read_text().split()[:2]
        if limit != "max":
            quota = int(limit) / int(period)
    except (OSError, ValueError):
        try:
            limit = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            quota = limit / period if limit > 0 and period > 0 else None
        except (OSError, ValueError):
            quota = None
    if quota is not None:
        cores = min(cores, max(1, -(-quota // 1)))  # a quota of 1.5 CPUs gets 2 threads
    return max(1, int(cores))


def model_dir() -> Path:
    """Where the model files are: ``$MODEL_DIR``, else ``model/`` beside this file."""
    return Path(os.environ.get("MODEL_DIR", Path(__file__).resolve().parent / "model"))


def load_tokenizer(folder: Path) -> Tokenizer:
    """The model's tokenizer from ``tokenizer.json``: pad to the longest text, never truncate silently."""
    config = json.loads((folder / "serving.json").read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.enable_padding(pad_id=config["pad_id"], pad_token=config["pad_token"])
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 (input_ids, attention_mask); a text longer than the model reads is an error, not a cut."""
    encodings = tokenizer.encode_batch(texts)
    lengths = [sum(e.attention_mask) for e in encodings]
    too_long = {i: n for i, n in enumerate(lengths) if n > max_tokens}
    if too_long:
        raise HTTPException(status_code=422, detail=(
            f"texts longer than this model reads ({max_tokens} tokens): "
            + ", ".join(f"text {i} has {n} tokens" for i, n in too_long.items())
            + ". Split them into shorter passages."))
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


def run_together(embed: Embed, items: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> list[np.ndarray]:
    """One forward pass for several requests' token arrays: pad them to the longest, stack, split.

    The padding is masked out (attention mask 0), so each request's vectors are what it would get
    alone, up to float rounding: a batch changes how much is computed, not the answer.
    """
    longest = max(ids.shape[1] for ids, _ in items)
    ids = np.concatenate([np.pad(i, ((0, 0), (0, longest - i.shape[1])), constant_values=pad_id) for i, _ in items])
    mask = np.concatenate([np.pad(m, ((0, 0), (0, longest - m.shape[1]))) for _, m in items])
    vectors = embed(ids, mask)
    bounds = np.cumsum([0] + [i.shape[0] for i, _ in items])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def create_app(backend: str, load: Loader, batcher_factory: Callable | None = None) -> FastAPI:
    """The HTTP service: ``GET /health`` and ``POST /embed``; the model loads before the first request
    (``EMBED_READINESS=before-serving``, the default) or in the background (``background``).

    ``batcher_factory(run_batch)``, when given (lab 10), returns ``submit(item, tokens)`` -> a
    ``concurrent.futures.Future``: each request's ``(input_ids, attention_mask)`` is submitted
    with its token count, and ``run_batch(items)`` (:func:`run_together`) runs a batch of them.
    ``submit`` raising means the server cannot take the request now (its queue is full): the
    client gets 503 with ``Retry-After`` at once, instead of a wait that grows without bound.
    """
    state: dict = {}
    # One forward pass at a time. FastAPI runs plain-def handlers in a pool of 40 threads: without
    # the lock, 40 concurrent requests would run 40 forward passes at once, each asking for every
    # core the model's threads were given (40 x cpu_threads() threads on a few cores), and all of
    # them would finish late. With it, requests queue and each forward pass has the cores to itself
    # (lab 10 goes further: it batches the queued requests).
    model_lock = threading.Lock()
    # Where the start is, for /health: one dict the loader replaces whole and handlers read (lab 08).
    started = time.monotonic()
    progress = {"status": "loading", "stage": "starting", "error": None}
    mode = os.environ.get("EMBED_READINESS", "before-serving").strip().lower()
    if mode not in ("before-serving", "background"):
        raise ValueError(f"EMBED_READINESS={mode!r}: use 'before-serving' or 'background'")

    def report(status: str, stage: str, error: str | None = None) -> None:
        nonlocal progress
        progress = {"status": status, "stage": stage, "error": error}

    def now() -> tuple[int, dict]:
        current = progress
        body = {**current, "elapsed_s": round(time.monotonic() - started, 3)}
        return (200 if current["status"] == "ready" else 503), body

    def start() -> None:
        try:
            folder = model_dir()
            report("loading", "reading the config and tokenizer")
            state["config"] = json.loads((folder / "serving.json").read_text(encoding="utf-8"))
            state["tokenizer"] = load_tokenizer(folder)
            report("loading", "loading the model")
            loaded = load(folder, state["config"])
            state["embed"], state["variant"] = loaded[0], loaded[1]
            state["report"] = loaded[2] if len(loaded) > 2 else None
            if batcher_factory is not None:
                embed_fn, pad_id = state["embed"], int(state["config"]["pad_id"])
                state["submit"] = batcher_factory(lambda items: run_together(embed_fn, items, pad_id))
                state["variant"] += ", dynamic batching"
            # Warm up with one text and with two of different lengths: torch.compile(dynamic=True) still
            # specialises sizes of 1, so warming with one text alone would leave the first request with
            # several texts to compile while its user waits.
            report("warming", "warm-up requests")
            for texts in (["warm-up request"], ["warm-up request", "a second, longer warm-up request of another length"]):
                state["embed"](*tokenize(state["tokenizer"], texts, state["config"]["max_tokens"]))
            report("ready", "serving")
        except Exception as exc:  # the server stays up and says why (background mode)
            report("failed", progress["stage"], f"{type(exc).__name__}: {exc}")
            if mode == "before-serving":
                raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if mode == "background":
            threading.Thread(target=start, name="model-loader", daemon=True).start()
        else:
            start()
        yield
        state.clear()

    app = FastAPI(title=f"sentence embeddings ({backend})", lifespan=lifespan)

    @app.get("/health")
    def health():
        code, body = now()
        if code != 200:
            return JSONResponse(status_code=code, content={"backend": backend, **body})
        config = state["config"]
        body = {"status": "ok", "backend": backend, "variant": state["variant"], "model": config["model"],
                "dim": config["dim"], "max_tokens": config["max_tokens"], "max_texts": MAX_TEXTS,
                "uptime_s": body["elapsed_s"]}
        report = state.get("report")
        if report is not None:  # lab 09: what is serving, on what, and whether it was built at this start
            body.update(model_loaded=True, device=report["device"], backend_in_use=report["candidate"],
                        artifact=report["source"])
        return body

    @app.get("/optimization")
    def optimization():
        code, body = now()
        if code != 200:
            return JSONResponse(status_code=code, content={"backend": backend, **body})
        if state.get("report") is None:
            raise HTTPException(status_code=404, detail=f"the {backend} server serves one fixed backend and measured "
                                                        "no alternatives: /optimization is auto_app's (lab 09)")
        return state["report"]

    @app.post("/embed", response_model=EmbedResponse)
    def embed(request: EmbedRequest) -> EmbedResponse:  # a plain def: FastAPI runs it off the event loop
        code, body = now()
        if code != 200:
            raise HTTPException(status_code=503, headers={"Retry-After": "1"},
                                detail=f"not ready: {body['status']} ({body['stage']}, {body['elapsed_s']:.1f} s)"
                                       + (f": {body['error']}" if body["error"] else ""))
        config = state["config"]
        ids, mask = tokenize(state["tokenizer"], request.texts, config["max_tokens"])
        if "submit" in state:
            try:
                pending = state["submit"]((ids, mask), int(ids.size))
            except Exception as exc:  # a full queue: say so now; a client can retry elsewhere or later
                raise HTTPException(status_code=503, headers={"Retry-After": "1"},
                                    detail=f"busy: {type(exc).__name__}: {exc}") from None
            try:
                vectors = pending.result(timeout=120)
            except Exception as failure:  # this request's own error; its batch-mates got their answers
                raise HTTPException(status_code=500, detail=f"the model failed on this request: "
                                                            f"{type(failure).__name__}: {failure}") from None
        else:
            with model_lock:
                vectors = state["embed"](ids, mask)
        return EmbedResponse(model=config["model"], dim=int(vectors.shape[1]), embeddings=vectors.tolist())

    return app
