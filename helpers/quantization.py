"""Where a model's bytes are, and what int8 can shrink: the facts behind lab 03's size figures.

Dynamic int8 quantization (``torch.ao.quantization.quantize_dynamic``, torchao's
``Int8DynamicActivationInt8WeightConfig``, ONNX Runtime's ``quantize_dynamic``) stores
the weight *matrices* of ``nn.Linear`` layers in one byte per value instead of four.
Embedding tables, biases and LayerNorm parameters stay float32, which is why a
transformer encoder shrinks by 1.5-2.5x, not 4x.  :func:`size_breakdown` shows the split.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

GROUPS = ("embeddings", "Linear weights", "Linear biases", "LayerNorm", "other")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every ``nn.Linear`` in ``model``, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _group(module: nn.Module, param_name: str) -> str:
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if isinstance(module, nn.Linear):
        return "Linear weights" if param_name == "weight" else "Linear biases"
    if isinstance(module, nn.LayerNorm):
        return "LayerNorm"
    return "other"


def size_breakdown(model: nn.Module) -> pd.DataFrame:
    """Parameters and bytes per group, as float32 and after int8 dynamic quantization of Linear weights.

    The "int8 (MiB)" column assumes Linear weights at 1 byte per value and everything else
    unchanged: the ideal that per-tensor dynamic quantization reaches up to a few scales.
    """
    counts = dict.fromkeys(GROUPS, 0)
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            counts[_group(module, param_name)] += param.numel()
    rows = []
    for group, n in counts.items():
        fp32 = n * 4
        int8 = n if group == "Linear weights" else fp32
        rows.append({"group": group, "parameters": n, "fp32 (MiB)": fp32 / 2**20, "int8 (MiB)": int8 / 2**20})
    table = pd.DataFrame(rows).set_index("group")
    table.loc["total"] = table.sum()
    table["parameters"] = table["parameters"].astype(int)
    table["share of fp32"] = table["fp32 (MiB)"] / table.loc["total", "fp32 (MiB)"]
    return table


def predicted_int8_ratio(model: nn.Module) -> float:
    """fp32 size / int8 size if only the Linear weights become int8 (from :func:`size_breakdown`)."""
    total = size_breakdown(model).loc["total"]
    return float(total["fp32 (MiB)"] / total["int8 (MiB)"])

