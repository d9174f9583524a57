"""Sentence embeddings over HTTP with ONNX Runtime and the `tokenizers` library only: no PyTorch.

Run: ``MODEL_DIR=model uvicorn onnx_app:app --port 8000`` (the model folder comes from
``helpers.deployment.prepare_context``: ``encoder.onnx``, ``tokenizer.json``, ``serving.json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from common import cpu_threads, create_app


def load(folder: Path, config: dict):
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # online: this machine's layout
    threads = cpu_threads()  # the container's CPU share; ONNX Runtime's default is one thread per host core
    settings.intra_op_num_threads = threads
    settings.inter_op_num_threads = 1
    gpu = [name for name in ("CUDAExecutionProvider",) if name in ort.get_available_providers()]
    session = ort.InferenceSession(str(folder / config["onnx_file"]), settings, providers=gpu + ["CPUExecutionProvider"])

    def embed(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return session.run([config["onnx_output"]], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    return embed, f"onnxruntime {ort.__version__}, {session.get_providers()[0]}, fp32, {threads} threads"


app = create_app("onnxruntime", load)
