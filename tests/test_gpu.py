"""helpers.gpu: host syncs are found on any device; CUDA-only helpers say so clearly without a GPU."""

import pytest
import torch

from helpers import inputs_of_shape
from helpers.gpu import (capture_cuda_graph, copy_bandwidth, host_syncs, kernel_launches, plot_timelines,
                         require_cuda, skip_reason, timeline)


def test_host_syncs_finds_reads_of_device_values_in_call_order():
    x = torch.tensor([1.0, 2.0])
    assert host_syncs(lambda: x + 1) == []
    found = host_syncs(lambda: (float(x.sum()), bool((x > 0).all())))
    assert found == ["aten::_local_scalar_dense", "aten::_local_scalar_dense"]
    assert host_syncs(lambda: x.nonzero()) == ["aten::nonzero"]


def test_the_encoders_mask_check_is_a_host_sync_and_leaving_the_mask_out_removes_it(minilm):
    """Lab 04's claim: eager capture needs a call without the padding mask (the output is unchanged)."""
    full = inputs_of_shape(minilm.tokenizer, 1, 16, fill=True)
    with torch.inference_mode():
        assert host_syncs(lambda: minilm.model(**full))
        assert host_syncs(lambda: minilm.model(input_ids=full["input_ids"])) == []
        same = minilm.model(input_ids=full["input_ids"]).last_hidden_state
        torch.testing.assert_close(same, minilm.model(**full).last_hidden_state)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only messages")
def test_cuda_only_helpers_fail_with_a_readable_message_without_a_gpu():
    assert "needs a CUDA GPU" in skip_reason("pinned memory") and "[GPU] skipped" in skip_reason("x")
    for call in (lambda: require_cuda("Something"),
                 lambda: copy_bandwidth(1024, pinned=True, non_blocking=True),
                 lambda: capture_cuda_graph(lambda: torch.ones(1)),
                 lambda: kernel_launches(lambda: None),
                 lambda: timeline(lambda: None)):
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            call()


def test_plot_timelines_draws_one_panel_per_timeline():
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    rows = pd.DataFrame({"lane": ["host: ATen ops", "GPU: kernels"], "name": ["aten::add", "kernel"],
                         "start_us": [0.0, 5.0], "duration_us": [4.0, 1.0]})
    fig = plot_timelines({"a": rows, "b": rows.iloc[:1]}, title="t")
    assert len(fig.axes) == 2 and fig.axes[0].get_title(loc="left") == "a"


@pytest.mark.gpu
def test_gpu_helpers_measure_on_a_real_gpu():
    gbps, timing = copy_bandwidth(2**20, pinned=True, non_blocking=True, runs=5, warmup=1)
    assert gbps > 0 and timing.env["device"] == "cuda"
    x = torch.ones(256, 256, device="cuda")
    graph, out = capture_cuda_graph(lambda: x @ x)
    x.fill_(2.0)
    graph.replay()
    torch.cuda.synchronize()
    assert out[0, 0].item() == 4.0 * 256
    assert kernel_launches(lambda: x @ x) >= 1
    table = timeline(lambda: x @ x)
    assert set(table["lane"]) == {"host: ATen ops", "GPU: kernels"}
