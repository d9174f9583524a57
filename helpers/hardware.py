"""Hardware facts: which device is there, what it can do, and the environment a number came from.

Capability checks return a :class:`Capability` (``ok`` plus a human reason) so a lab can
print *why* a GPU-only cell was skipped instead of failing on a CPU-only machine.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import NamedTuple

import torch

# Thresholds the labs rely on (compute capability = (major, minor)).
FP16_TENSOR_CORES_FROM = (7, 0)   # Volta
BF16_FROM = (8, 0)                # Ampere
MAX_AUTOTUNE_MIN_SMS = 68         # torch.compile's max-autotune GEMM search is skipped below this


class Capability(NamedTuple):
    """Whether a feature is usable here, and a sentence saying why (shown when skipping)."""

    ok: bool
    reason: str


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def best_device() -> str:
    """``"cuda"`` if an NVIDIA/AMD GPU is usable, else ``"mps"`` (Apple), else ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def device_name(device: str | torch.device | None = None) -> str:
    """A readable name for ``device`` (GPU model, or the CPU's processor string)."""
    dev = torch.device(device or best_device())
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return "Apple GPU (MPS)"
    return _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def compute_capability(device: int | str | torch.device | None = None) -> tuple[int, int] | None:
    """The CUDA compute capability, or ``None`` when there is no CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


def _needs(cap: tuple[int, int], what: str) -> Capability:
    have = compute_capability()
    need = f"{cap[0]}.{cap[1]}"
    if have is None:
        return Capability(False, f"no CUDA GPU here: {what} needs compute capability >= {need}")
    name = torch.cuda.get_device_name()
    if have >= cap:
        return Capability(True, f"{name} has compute capability {have[0]}.{have[1]} (>= {need}): {what} available")
    return Capability(False, f"{name} has compute capability {have[0]}.{have[1]}; {what} needs >= {need}")


def fp16_tensor_cores() -> Capability:
    """fp16 tensor cores (Volta, 7.0, and newer)."""
    return _needs(FP16_TENSOR_CORES_FROM, "fp16 tensor cores")


def bf16_support() -> Capability:
    """Native bf16 matrix math (Ampere, 8.0, and newer)."""
    return _needs(BF16_FROM, "bf16 tensor cores")


def max_autotune_gemms() -> Capability:
    """Whether ``torch.compile(mode="max-autotune")`` will search GEMM kernels (needs >= 68 SMs)."""
    if not torch.cuda.is_available():
        return Capability(False, "no CUDA GPU here: max-autotune's Triton GEMM search and CUDA graphs need "
                                 "a GPU (on a CPU it can only try Inductor's C++ GEMM templates)")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    sms = props.multi_processor_count
    if sms >= MAX_AUTOTUNE_MIN_SMS:
        return Capability(True, f"{props.name} has {sms} SMs (>= {MAX_AUTOTUNE_MIN_SMS}): GEMM autotuning runs")
    return Capability(False, f"{props.name} has {sms} SMs; max-autotune tunes GEMMs only from "
                             f"{MAX_AUTOTUNE_MIN_SMS} SMs (a Colab T4 has 40)")


# --- the CPU: which instructions decide this machine's results ----------------------------

# The flags that flip the course's CPU conclusions (bf16 speed, int8 speed, which kernels run).
CPU_FEATURES = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "neon")
# /proc/cpuinfo spells some of them differently (Linux names).
_CPUINFO_NAMES = {"avx512_vnni": ("avx512_vnni", "avx512vnni"), "avx512_bf16": ("avx512_bf16",),
                  "amx_bf16": ("amx_bf16",), "amx_int8": ("amx_int8",), "neon": ("neon", "asimd")}


def cpu_features() -> dict[str, bool]:
    """Which of :data:`CPU_FEATURES` this CPU has.

    Read from ``/proc/cpuinfo`` on Linux (Colab, servers, CI); elsewhere from what PyTorch's own
    dispatcher chose (``torch.backends.cpu.get_cpu_capability()``: ``AVX2``, ``AVX512``...),
    which cannot tell VNNI or bf16 apart and leaves them ``False``.
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags:
        capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).lower()
        flags = {"avx2"} if "avx2" in capability else set()
        if "avx512" in capability:
            flags |= {"avx2", "avx512f"}
        if platform.machine().lower() in ("arm64", "aarch64"):
            flags.add("neon")
    return {name: any(alias in flags for alias in _CPUINFO_NAMES.get(name, (name,))) for name in CPU_FEATURES}


def cpu_flags_text(features: dict[str, bool] | None = None) -> str:
    """The features this CPU has, as one short string: ``"avx2 avx512f avx512_vnni avx512_bf16"``."""
    features = cpu_features() if features is None else features
    have = [name for name, ok in features.items() if ok]
    return " ".join(have) if have else "none of " + ", ".join(CPU_FEATURES)


def machine_label() -> str:
    """The CPU by model and by the features that decide results: what every figure's footer names."""
    return f"{_cpu_name()} [{cpu_flags_text()}]"


def cpu_bf16() -> Capability:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is emulated."""
    features = cpu_features()
    native = [name for name in ("avx512_bf16", "amx_bf16") if features[name]]
    if native:
        return Capability(True, f"this CPU has bf16 instructions ({', '.join(native)})")
    return Capability(False, f"this CPU has no bf16 instructions (flags: {cpu_flags_text(features)}): "
                             "bf16 math is converted to fp32 and back, so it can be slower than fp32")


def cpu_int8_dot() -> Capability:
    """Whether this CPU has an int8 dot-product instruction (AVX-VNNI, AVX512-VNNI or AMX-INT8)."""
    features = cpu_features()
    native = [name for name in ("avx_vnni", "avx512_vnni", "amx_int8") if features[name]]
    if native:
        return Capability(True, f"this CPU has int8 dot-product instructions ({', '.join(native)})")
    return Capability(False, f"this CPU has no int8 dot-product instruction (flags: {cpu_flags_text(features)}): "
                             "int8 matrix products take several instructions per multiply-add")


def ort_quantization_target() -> str:
    """The name of the ONNX Runtime dynamic-quantization preset (optimum's ``AutoQuantizationConfig``,
    which sentence-transformers' ``export_dynamic_quantized_onnx_model`` takes) for this CPU:
    ``arm64`` on ARM; ``avx512_vnni`` (int8 weights, full range) where the CPU has an int8
    dot-product instruction (:func:`cpu_int8_dot`); else ``avx2``, which stores weights as uint8,
    not the full-range int8 whose products saturated without VNNI in lab 06 (the ``avx512`` preset
    keeps int8 weights, so an AVX-512 CPU without VNNI gets ``avx2`` too). Read from the CPU, never
    assumed; whether a preset keeps quality is still measured (lab 09's quality check)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    return "avx512_vnni" if cpu_int8_dot().ok else "avx2"


# --- one thread count for everything a lab runs -----------------------------------------

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def use_threads(threads: int) -> int:
    """Set the CPU thread count once for this process and the processes it starts.

    ``torch.set_num_threads`` for this kernel, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for
    every child process (a compile probe, a server), so timing, compiling and new-process
    measurements all use the same count. Inductor keys its cache on it: a probe at another count
    would be a cold compile. ONNX Runtime sessions take it as ``intra_op_num_threads``.
    """
    count = int(threads)
    if count < 1:
        raise ValueError(f"threads must be at least 1, got {threads!r}")
    torch.set_num_threads(count)
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(count)
    return count


_COMPILES: dict[str, str | None] = {}  # compiler path -> None if it builds a program, else why not


def _builds_a_program(path: str) -> str | None:
    """None when ``path`` compiles and links a one-line C++ program, else what went wrong.

    Found is not enough: on macOS ``/usr/bin/clang++`` exists without the Command Line Tools
    (it only offers to install them), and torch.compile would fail on its first call.
    """
    if path not in _COMPILES:
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run = subprocess.run([path, "-x", "c++", "-", "-o", os.path.join(tmp, "a.out")],
                                     input="int main() { return 0; }\n", capture_output=True, text=True, timeout=120)
                _COMPILES[path] = None if run.returncode == 0 else (
                    (run.stderr.strip().splitlines() or [f"exit code {run.returncode}"])[-1][:200])
            except (OSError, subprocess.TimeoutExpired) as exc:
                _COMPILES[path] = f"{type(exc).__name__}: {exc}"[:200]
    return _COMPILES[path]


def cpp_compiler() -> Capability:
    """Whether torch.compile can build CPU kernels: Inductor writes C++ and needs a compiler that works."""
    import shutil
    for name in ("c++", "g++", "clang++", "cl"):
        path = shutil.which(name)
        if path and name == "cl":  # MSVC takes other flags; found on PATH means a Developer prompt
            return Capability(True, f"C++ compiler found ({path}): torch.compile can build CPU kernels")
        if path:
            problem = _builds_a_program(path)
            if problem is None:
                return Capability(True, f"C++ compiler found ({path}): torch.compile can build CPU kernels")
            return Capability(False, f"{path} is on PATH but cannot build a C++ program ({problem}): "
                                     "torch.compile's CPU backend needs a working compiler. macOS: "
                                     "xcode-select --install; Linux: install g++; or run this lab in Colab")
    return Capability(False, "no C++ compiler on PATH: torch.compile's CPU backend (Inductor) needs one. "
                             "Install build tools (Linux: g++; macOS: xcode-select --install; Windows: "
                             "MSVC Build Tools), or run this lab in Colab")


def runtime_environment(device: str | torch.device | None = None, threads: int | None = None) -> dict:
    """The facts that belong next to every timing: what ran it, where, with how many threads."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    env = {
        "device": dev.type,
        "device_name": device_name(dev),
        "cpu_features": cpu_flags_text(),
        "torch": torch.__version__,
        "cpu_threads": threads if threads is not None else torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    if dev.type == "cuda":
        env["cuda"] = torch.version.cuda
        cap = compute_capability(dev)
        env["compute_capability"] = f"{cap[0]}.{cap[1]}" if cap else None
    return env


def environment_summary() -> "pandas.DataFrame":  # noqa: F821 - pandas imported lazily
    """A short table for a lab's setup cell: device, capabilities, versions, Colab or not."""
    import pandas as pd
    import transformers

    dev = best_device()
    rows = {
        "device used by default": f"{dev} ({device_name(dev)})",
        "CPU": f"{_cpu_name()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads",
        "CPU features": (f"{cpu_flags_text()} (torch kernels: "
                         f"{getattr(torch.backends.cpu, 'get_cpu_capability', lambda: '?')()})"),
        "CPU bf16": cpu_bf16().reason,
        "CPU int8 dot product": cpu_int8_dot().reason,
        "CUDA GPU": (f"{torch.cuda.get_device_name()} (compute capability "
                     f"{'.'.join(map(str, compute_capability()))}, CUDA {torch.version.cuda})"
                     if torch.cuda.is_available() else "none"),
        "fp16 tensor cores": fp16_tensor_cores().reason,
        "bf16": bf16_support().reason,
        "max-autotune GEMMs": max_autotune_gemms().reason,
        "Colab": "yes" if in_colab() else "no",
        "python / torch / transformers": f"{platform.python_version()} / {torch.__version__} / {transformers.__version__}",
    }
    return pd.DataFrame({"value": rows}).rename_axis("fact")
