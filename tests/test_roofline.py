"""helpers.roofline and helpers.precision: counted FLOPs, MFU and the floor; number formats, the TF32 switch."""

import math

import pytest
import torch

from helpers.precision import number_formats, tf32_matmuls
from helpers.roofline import achieved_flops_per_s, counted_flops, floor_seconds, mfu


def test_counted_flops_is_two_per_multiply_add():
    a, b = torch.ones(4, 5), torch.ones(5, 6)
    assert counted_flops(lambda: a @ b) == 2 * 4 * 5 * 6
    assert counted_flops(lambda: a + 1) == 0  # element-wise work is not counted


def test_mpnet_base_flops_match_the_published_figure():
    """22.35 GFLOP per 128-token sequence (ANCHORS.md), counted on the architecture itself."""
    from transformers import AutoModel, MPNetConfig
    config = MPNetConfig(num_hidden_layers=1)  # one layer is enough: every layer is the same
    model = AutoModel.from_config(config).eval()
    ids = torch.ones(1, 128, dtype=torch.long)
    with torch.inference_mode():
        one_layer = counted_flops(lambda: model(input_ids=ids)) - 2 * 768 * 768  # minus the pooler
    assert math.isclose(12 * one_layer, 22.35e9, rel_tol=0.005)


def test_mfu_and_floor_are_the_ratios_they_name():
    assert achieved_flops_per_s(1e12, 0.5) == 2e12
    assert mfu(1e12, 0.5, 4e12) == 0.5
    assert floor_seconds(1e12, 4e12) == 0.25
    for bad in (lambda: mfu(1, 1, 0), lambda: floor_seconds(1, -1), lambda: achieved_flops_per_s(1, 0)):
        with pytest.raises(ValueError):
            bad()


def test_number_formats_give_range_and_precision():
    table = number_formats()
    assert table.loc["float16", "largest value"] == 65504.0
    assert table.loc["bfloat16", "largest value"] == pytest.approx(torch.finfo(torch.float32).max, rel=0.01)
    assert table.loc["bfloat16", "epsilon (relative step)"] == torch.finfo(torch.bfloat16).eps
    assert table.loc["float16", "epsilon (relative step)"] == torch.finfo(torch.float16).eps
    assert (table["bits in memory"] == [32, 32, 16, 16]).all()


def test_tf32_switch_restores_the_previous_setting_even_after_an_error():
    matmul = torch.backends.cuda.matmul
    read = (lambda: matmul.fp32_precision) if hasattr(matmul, "fp32_precision") else torch.get_float32_matmul_precision
    before = read()
    with pytest.raises(KeyError):
        with tf32_matmuls():
            assert read() in ("tf32", "high")
            raise KeyError("boom")
    assert read() == before
