"""What both embedding servers share: the request format, its validation, tokenization and the HTTP app.

No PyTorch here: the ONNX Runtime server must run without it.  Each server supplies one
function, ``load(model_dir, config) -> (embed, description)``, where ``embed(input_ids,
attention_mask)`` takes int64 arrays of shape (batch, tokens) and returns unit-length float32
sentence embeddings of shape (batch, dim).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException
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


def create_app(backend: str, load: Loader) -> FastAPI:
    """The HTTP service: ``GET /health`` and ``POST /embed``; the model loads before the first request."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        folder = model_dir()
        state["config"] = json.loads((folder / "serving.json").read_text(encoding="utf-8"))
        state["tokenizer"] = load_tokenizer(folder)
        state["embed"], state["variant"] = load(folder, state["config"])
        # Warm up with one text and with two of different lengths: torch.compile(dynamic=True) still
        # specialises sizes of 1, so warming with one text alone would leave the first request with
        # several texts to compile while its user waits.
        for texts in (["warm-up request"], ["warm-up request", "a second, longer warm-up request of another length"]):
            state["embed"](*tokenize(state["tokenizer"], texts, state["config"]["max_tokens"]))
        yield
        state.clear()

    app = FastAPI(title=f"sentence embeddings ({backend})", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict:
        config = state["config"]
        return {"status": "ok", "backend": backend, "variant": state["variant"], "model": config["model"],
                "dim": config["dim"], "max_tokens": config["max_tokens"], "max_texts": MAX_TEXTS}

    @app.post("/embed", response_model=EmbedResponse)
    def embed(request: EmbedRequest) -> EmbedResponse:  # a plain def: FastAPI runs it off the event loop
        config = state["config"]
        ids, mask = tokenize(state["tokenizer"], request.texts, config["max_tokens"])
        vectors = state["embed"](ids, mask)
        return EmbedResponse(model=config["model"], dim=int(vectors.shape[1]), embeddings=vectors.tolist())

    return app
