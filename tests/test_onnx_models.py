"""helpers.onnx_models: the export keeps batch and sequence symbolic, matches PyTorch on new shapes,
and ONNX Runtime sessions are built the way the labs say (explicit providers, level, offline file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import onnx_models as om


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer BERT with random weights and a word-level tokenizer: exports in seconds."""
    from transformers import AutoModel, BertConfig
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def _batch(b, s, pad=0):
    ids = torch.randint(5, 60, (b, s))
    mask = torch.ones(b, s, dtype=torch.long)
    if pad:
        mask[0, s - pad:] = 0
        ids[0, s - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return om.export_onnx(tiny, _batch(2, 8), path)


def test_export_keeps_batch_and_sequence_symbolic(exported):
    import onnx
    onnx.checker.check_model(str(exported))
    dims = om.graph_dims(exported)
    for name in om.INPUT_NAMES:
        assert all(isinstance(d, str) and d for d in dims[name]), dims
    batch_dim, width = dims[om.OUTPUT_NAME]
    assert batch_dim == dims["input_ids"][0] and width == 32


def test_export_writes_external_weights_by_default_and_one_file_on_request(exported, tiny, tmp_path):
    info = om.describe_file(exported)
    assert info["weights in"] == "tiny.onnx.data" and set(info["files (bytes)"]) == {"tiny.onnx", "tiny.onnx.data"}
    single = om.export_onnx(tiny, _batch(2, 8), tmp_path / "one.onnx", external_data=False)
    assert om.describe_file(single)["weights in"] == "the .onnx file itself"
    assert not (tmp_path / "one.onnx.data").exists()


@pytest.mark.parametrize("shape", [(1, 3), (5, 17), (3, 40)])
def test_onnx_runtime_matches_pytorch_on_shapes_it_was_not_exported_with(exported, tiny, shape):
    batch = _batch(*shape, pad=2)
    session = om.ort_session(exported, provider_list=["CPUExecutionProvider"])
    got = session.run([om.OUTPUT_NAME], om.feeds_of(batch))[0]
    with torch.inference_mode():
        want = om.PooledEncoder(tiny)(**batch).numpy()
    assert got.shape == want.shape == (shape[0], 32)
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_sessions_name_their_providers_and_level(exported):
    chosen = om.providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert chosen[-1] == "CPUExecutionProvider"
    session = om.ort_session(exported, level="basic", provider_list=chosen)
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    assert session.get_session_options().graph_optimization_level == om.level_of("basic")
    with pytest.raises(ValueError, match="unknown optimization level"):
        om.level_of("max")
    with pytest.raises(FileNotFoundError, match="export the model first"):
        om.ort_session(exported.parent / "missing.onnx")


def test_levels_are_distinct_and_ordered_and_a_missing_one_is_named(monkeypatch):
    import onnxruntime as ort
    levels = [int(om.level_of(name)) for name in om.available_levels()]
    assert levels == sorted(levels) and len(set(levels)) == len(levels) >= 4
    assert om.available_levels()[0] == "disable" and om.available_levels()[-1] == "all"

    class Old:  # an ONNX Runtime from before ORT_ENABLE_LAYOUT
        ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL = 0, 1, 2, 99
    monkeypatch.setattr(ort, "GraphOptimizationLevel", Old)
    assert om.available_levels() == ("disable", "basic", "extended", "all")
    with pytest.raises(ValueError, match="no ORT_ENABLE_LAYOUT level"):
        om.level_of("layout")


def test_offline_mode_writes_a_file_that_loads_with_optimizations_off(exported, tmp_path):
    optimized = tmp_path / "tiny.optimized.onnx"
    om.ort_session(exported, level="extended", optimized_path=optimized)
    assert optimized.is_file()
    # self-contained: its weights are in its own file, not in the exported model's .data
    assert om.describe_file(optimized)["weights in"] == "tiny.optimized.onnx.data"
    reloaded = om.ort_session(optimized, level="disable")
    assert reloaded.get_session_options().graph_optimization_level == om.level_of("disable")
    out = reloaded.run([om.OUTPUT_NAME], om.feeds_of(_batch(2, 5)))[0]
    assert out.shape == (2, 32)


def test_int8_quantization_stores_weights_in_int8(exported, tmp_path):
    import onnx
    quantized = om.quantize_int8(exported, tmp_path / "tiny.int8.onnx")
    model = onnx.load(str(quantized))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    session = om.ort_session(quantized)
    assert session.run([om.OUTPUT_NAME], om.feeds_of(_batch(1, 6)))[0].shape == (1, 32)


def test_reduce_range_stores_7_bit_weights(exported, tmp_path):
    """reduce_range=True (for CPUs without VNNI, whose int16 sums saturate): weights within ±64, 7 bits."""
    import onnx
    from onnx import numpy_helper

    def int8_extremes(path):
        values = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                  if t.data_type == onnx.TensorProto.INT8 and t.dims]
        return min(int(v.min()) for v in values), max(int(v.max()) for v in values)

    full_low, full_high = int8_extremes(om.quantize_int8(exported, tmp_path / "full.int8.onnx"))
    seven = om.quantize_int8(exported, tmp_path / "seven.int8.onnx", reduce_range=True)
    assert full_low < -64 or full_high > 64  # without it, all 8 bits are used
    low, high = int8_extremes(seven)
    assert -64 <= low and high <= 64, (low, high)
    assert om.ort_session(seven).run([om.OUTPUT_NAME], om.feeds_of(_batch(1, 6)))[0].shape == (1, 32)


def test_int8_of_matmuls_only_keeps_the_embedding_table_in_fp32(exported, tmp_path):
    import onnx

    def float_initializers(path):
        return {t.name for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT}

    def total_bytes(path):
        return sum(om.describe_file(path)["files (bytes)"].values())

    table = "embeddings.word_embeddings.weight"
    everything = om.quantize_int8(exported, tmp_path / "all.int8.onnx")
    matmuls = om.quantize_int8(exported, tmp_path / "matmul.int8.onnx", op_types=["MatMul"])
    assert not any(n.endswith(table) for n in float_initializers(everything))  # ONNX Runtime's default: Gather too
    assert any(n.endswith(table) for n in float_initializers(matmuls))
    assert total_bytes(matmuls) > total_bytes(everything)
    assert om.ort_session(matmuls).run([om.OUTPUT_NAME], om.feeds_of(_batch(1, 6)))[0].shape == (1, 32)


def test_export_refuses_an_example_without_the_inputs(tiny, tmp_path):
    with pytest.raises(ValueError, match="missing"):
        om.export_onnx(tiny, {"input_ids": torch.ones(1, 4, dtype=torch.long)}, tmp_path / "x.onnx")
