import sys
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import helpers
from helpers import hardware


def test_best_device_falls_back_gracefully():
    assert helpers.best_device() in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert helpers.compute_capability() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only messages")
def test_cpu_only_capabilities_say_why():
    for check in (helpers.fp16_tensor_cores, helpers.bf16_support, helpers.max_autotune_gemms):
        cap = check()
        assert cap.ok is False and "no CUDA GPU" in cap.reason


def fake_gpu(monkeypatch, name, capability, sms):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(name=name, multi_processor_count=sms))


def test_colab_t4_has_fp16_but_not_bf16_or_autotune(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 40)
    assert helpers.fp16_tensor_cores().ok
    bf16 = helpers.bf16_support()
    assert not bf16.ok and "7.5" in bf16.reason and "8.0" in bf16.reason
    autotune = helpers.max_autotune_gemms()
    assert not autotune.ok and "40 SMs" in autotune.reason


def test_h100_has_everything(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA H100", (9, 0), 132)
    assert helpers.fp16_tensor_cores().ok and helpers.bf16_support().ok and helpers.max_autotune_gemms().ok


def test_old_gpu_has_no_tensor_cores(monkeypatch):
    fake_gpu(monkeypatch, "Tesla P100", (6, 0), 56)
    assert not helpers.fp16_tensor_cores().ok


def test_colab_detection(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not helpers.in_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab")
    assert helpers.in_colab()


def test_runtime_environment_and_summary():
    env = helpers.runtime_environment("cpu", threads=3)
    assert env["cpu_threads"] == 3 and env["device"] == "cpu" and env["torch"] == torch.__version__
    summary = helpers.environment_summary()
    assert isinstance(summary, pd.DataFrame)
    assert {"CUDA GPU", "bf16", "Colab", "max-autotune GEMMs"} <= set(summary.index)
    assert hardware.MAX_AUTOTUNE_MIN_SMS == 68 and hardware.BF16_FROM == (8, 0)


def test_cpp_compiler_check_says_what_to_install_when_missing(monkeypatch):
    import shutil
    real = shutil.which("g++") or shutil.which("c++")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    check = helpers.cpp_compiler()
    assert not check.ok and "C++ compiler" in check.reason and "Colab" in check.reason
    monkeypatch.setattr(shutil, "which", lambda name: real if name == "g++" else None)
    check = helpers.cpp_compiler()
    assert check.ok and real in check.reason


def test_cpp_compiler_check_compiles_instead_of_trusting_a_name_on_path(monkeypatch, tmp_path):
    """macOS has /usr/bin/clang++ without the Command Line Tools: found, but it cannot build anything."""
    import shutil
    shim = tmp_path / "clang++"
    shim.write_text("#!/bin/sh\necho 'xcrun: error: invalid active developer path' >&2\nexit 1\n")
    shim.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda name: str(shim) if name == "clang++" else None)
    check = helpers.cpp_compiler()
    assert not check.ok and "cannot build a C++ program" in check.reason and "xcode-select" in check.reason
    assert "invalid active developer path" in check.reason


def test_cpu_features_name_the_instructions_that_flip_results(monkeypatch, tmp_path):
    from helpers import hardware
    features = hardware.cpu_features()
    assert set(features) == set(hardware.CPU_FEATURES) and all(isinstance(v, bool) for v in features.values())
    label = hardware.machine_label()
    assert "[" in label and label.endswith("]")
    # the two kinds of box the course runs on, as /proc/cpuinfo lists them
    avx2_only = "flags\t\t: fpu sse2 avx avx2 fma\n"
    avx512 = "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    real_open = open

    def fake(text):
        def opener(path, *args, **kwargs):
            if str(path) == "/proc/cpuinfo":
                import io
                return io.StringIO(text)
            return real_open(path, *args, **kwargs)
        return opener

    monkeypatch.setattr("builtins.open", fake(avx2_only))
    assert hardware.cpu_flags_text() == "avx2"
    assert not hardware.cpu_bf16().ok and "no bf16 instructions (flags: avx2)" in hardware.cpu_bf16().reason
    assert not hardware.cpu_int8_dot().ok
    monkeypatch.setattr("builtins.open", fake(avx512))
    assert hardware.cpu_flags_text() == "avx2 avx512f avx512_vnni avx512_bf16"
    assert hardware.cpu_bf16().ok and "avx512_bf16" in hardware.cpu_bf16().reason
    assert hardware.cpu_int8_dot().ok


def test_every_timing_records_the_cpu_features():
    env = helpers.runtime_environment()
    assert "cpu_features" in env and env["cpu_features"]
    assert "CPU features" in helpers.environment_summary().index
