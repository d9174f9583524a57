"""Sentence embeddings over HTTP with PyTorch: the encoder from transformers, in inference mode.

``EMBED_COMPILE`` chooses the model: ``auto`` (default) compiles it with ``torch.compile(dynamic=True)``
when a C++ compiler is on PATH (Inductor needs one for CPU kernels) and runs eager otherwise;
``1`` insists on compiling, ``0`` runs eager.  ``/health`` says which one is serving.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel

from common import cpu_threads, create_app


def load(folder: Path, config: dict):
    torch.set_num_threads(cpu_threads())  # the container's CPU share, not the host's core count
    model = AutoModel.from_pretrained(folder / config["torch_dir"]).eval()
    choice = os.environ.get("EMBED_COMPILE", "auto").strip().lower()
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if choice == "1" and not compiler:
        raise RuntimeError("EMBED_COMPILE=1 but there is no C++ compiler on PATH: torch.compile needs one on a CPU")
    compiled = choice == "1" or (choice == "auto" and compiler is not None)
    forward = torch.compile(model, dynamic=True) if compiled else model

    def embed(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        with torch.inference_mode():
            hidden = forward(input_ids=ids, attention_mask=mask)[0]
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=1).numpy()

    how = "torch.compile(dynamic=True)" if compiled else "eager (no compile)"
    return embed, f"torch {torch.__version__}, {how}, fp32, {torch.get_num_threads()} threads"


app = create_app("pytorch", load)
