"""Sentence embeddings over HTTP with the backend chosen by measurement on this machine (lab 09).

At start it asks ``helpers.backends.serve`` for a backend: the previous decision and its artifact
from the cache when both are valid for these weights, settings, libraries and this machine, else
a new selection (every candidate built, checked against eager PyTorch and timed; the fastest that
passed is served). ``GET /optimization`` returns that decision with its measurements: the chosen
backend, the measured speedup against eager and its spread, the parity error, the quality, every
rejected candidate with its reason. Unlike the other two servers it needs the course package
(``helpers``) installed. Configuration: the ``EMBED_*`` variables of ``helpers.backends.ENV_VARS``
and ``EMBED_CACHE_DIR``.

Run: ``MODEL_DIR=model uvicorn auto_app:app --port 8000``.
"""

from __future__ import annotations

from pathlib import Path

from common import cpu_threads, create_app


def load(folder: Path, config: dict):
    from helpers import backends
    settings = backends.settings_from_env(threads=cpu_threads())
    served = backends.serve(folder, settings)
    return served.run, served.description, served.report


app = create_app("auto", load)
