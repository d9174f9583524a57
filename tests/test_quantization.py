"""Size breakdown behind lab 03's "why not 4x": exact counts on a toy model, the claim on MiniLM."""

import copy
import io

import pytest
import torch
from torch import nn

from helpers.quantization import linear_layer_names, predicted_int8_ratio, size_breakdown


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 8)
        self.block = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8, bias=False))
        self.norm = nn.LayerNorm(8)


def test_linear_layer_names_lists_nested_linears_in_order():
    assert linear_layer_names(Toy()) == ["block.0", "block.2"]


def test_size_breakdown_counts_each_group_exactly():
    table = size_breakdown(Toy())
    assert table.loc["embeddings", "parameters"] == 800
    assert table.loc["Linear weights", "parameters"] == 8 * 16 + 16 * 8
    assert table.loc["Linear biases", "parameters"] == 16
    assert table.loc["LayerNorm", "parameters"] == 16
    assert table.loc["total", "parameters"] == 800 + 256 + 16 + 16
    assert table.loc["Linear weights", "int8 (MiB)"] == pytest.approx(256 / 2**20)
    assert table.loc["embeddings", "int8 (MiB)"] == pytest.approx(800 * 4 / 2**20)  # stays fp32
    assert table.loc["total", "share of fp32"] == pytest.approx(1.0)


def test_predicted_ratio_is_fp32_over_int8_bytes():
    total_fp32 = (800 + 256 + 16 + 16) * 4
    total_int8 = (800 + 16 + 16) * 4 + 256
    assert predicted_int8_ratio(Toy()) == pytest.approx(total_fp32 / total_int8)
    only_linear = nn.Linear(64, 64, bias=False)
    assert predicted_int8_ratio(only_linear) == pytest.approx(4.0)


def test_minilm_int8_file_matches_the_prediction_and_is_far_from_4x(minilm):
    def saved_bytes(model):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        return buffer.getbuffer().nbytes

    with pytest.warns(DeprecationWarning):  # torch.ao.quantization is deprecated (lab 03 says so)
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(minilm.model), {nn.Linear}, dtype=torch.qint8)
    measured = saved_bytes(minilm.model) / saved_bytes(int8)
    predicted = predicted_int8_ratio(minilm.model)
    assert measured == pytest.approx(predicted, rel=0.05)
    assert 1.4 < measured < 1.7, "MiniLM's embedding table is about half the model"
