"""Choosing the inference backend by measuring it on the machine that serves (lab 09).

A **registry** (:data:`BACKENDS`) says what each backend is, which precisions it can run and
whether it can run here (:func:`availability`, with the reason when it cannot). :func:`select`
turns it into a decision: every candidate is built (its artifact cached by
:mod:`helpers.artifacts`), checked against eager PyTorch on batches of other shapes than the
ones it was built and timed with (fp32 and fp16 by a stated cosine tolerance; int8 by the
course's quality yardstick, cosine and the paired recall test), timed interleaved with the
others at the serving shape (:func:`helpers.compare`), and the fastest that passed is kept (one that
ran but failed its check is timed too, to show what it would have bought, and never chosen).
Every rejected candidate keeps its reason: unavailable, build failed (with the error), failed
to run, parity or quality failed (by how much), or slower (by how much).

:func:`serve` is what a server calls at start: the previous decision and its artifact from the
cache when they are valid (a fast start), else a new selection (a cold start). Configuration
comes from environment variables (:func:`settings_from_env`); a bad value stops with a
:class:`ConfigError` that names the variable and the values it takes.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import ArtifactCache, cache_key, default_cache_dir, environment_facts, weights_digest
from .hardware import Capability

Runner = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) int64 -> unit embeddings

PRECISIONS = ("fp32", "fp16", "int8")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Largest 1 - cosine to eager fp32 that a candidate may show on the parity batches. fp32 backends
# differ from eager only by the order of float additions (~1e-6); fp16 keeps ~3 decimal digits.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}
# int8 is judged by quality, not parity: its mean cosine to eager must reach this, and its
# recall@1 on the Q&A pairs must show no loss larger than chance (helpers.paired_recall_test).
# The floor is a policy: a service that changes backend keeps the vectors it already stored
# (an index embedded by the old backend), so new queries must still land near them, which
# retrieval within the new backend's own space does not show.
INT8_MIN_COSINE = 0.9


@dataclass(frozen=True)
class Backend:
    name: str
    precisions: tuple[str, ...]
    what: str


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("eager", ("fp32", "fp16"), "PyTorch eager, inference mode (the reference)"),
    Backend("compile", ("fp32", "fp16"), "torch.compile (Inductor), dynamic shapes, its cache saved as the artifact"),
    Backend("onnxruntime", ("fp32",), "lab 06's ONNX export, ONNX Runtime on the CPU execution provider"),
    Backend("onnxruntime-cuda", ("fp32",), "the same file on ONNX Runtime's CUDA execution provider"),
    Backend("tensorrt", ("fp32", "fp16"), "the same file on ONNX Runtime's TensorRT execution provider"),
    Backend("onnxruntime-int8", ("int8",), "lab 06's recipe: ONNX Runtime dynamic int8, per-channel weights"),
    Backend("torch-int8", ("int8",), "lab 03's classic recipe: torch.ao dynamic int8 Linear layers (legacy API)"),
    Backend("st-onnx", ("fp32", "int8"), "sentence-transformers' own ONNX backend (optimum-onnx): its O2 graph "
                                         "optimization; int8: its dynamic quantization preset for this CPU"),
    Backend("st-openvino", ("fp32", "int8"), "sentence-transformers' OpenVINO backend (optimum-intel), fp32 kept "
                                             "fp32; int8: its static quantization (NNCF), calibrated on training texts"),
)}
# sentence-transformers' own backends: the extra that brings each, the module it needs, the package
# and the pin that keeps it out of the course's environment (as of 2026-12): each is a dependency
# group of its own in pyproject.toml, synced into an environment of its own (README).
LIBRARY_BACKENDS = {"st-onnx": ("onnx", "optimum.onnxruntime", "optimum-onnx", "transformers < 4.58"),
                    "st-openvino": ("openvino", "optimum.intel.openvino", "optimum-intel", "transformers < 5.6")}
ST_ONNX_OPTIMIZATION = "O2"  # exact fusions only; O3 adds a tanh approximation of GELU; O4 is O3 in fp16, for GPUs
ENV_VARS = {
    "EMBED_OPTIMIZE": "1 (choose a backend) or 0 (serve eager fp32)",
    "EMBED_BACKEND": "auto or one of " + ", ".join(BACKENDS),
    "EMBED_CANDIDATES": "a comma-separated list of backends that auto may choose from",
    "EMBED_PRECISION": "the lowest precision allowed besides fp32: " + ", ".join(PRECISIONS),
    "EMBED_COMPILE_MODE": "torch.compile's mode: " + ", ".join(COMPILE_MODES),
    "EMBED_WARMUP": "untimed calls before timing, a whole number >= 0",
    "EMBED_RUNS": "timed calls per candidate, a whole number >= 1",
    "EMBED_BATCH_SIZE": "texts per request at the serving shape, a whole number >= 1",
    "EMBED_SEQ_LEN": "tokens per text at the serving shape, a whole number >= 1",
    "EMBED_DEVICE": "cpu or cuda",
    "EMBED_QUALITY_PAIRS": "Q&A pairs for the quality check, a whole number >= 2 (default: all)",
}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the variable and what it takes."""


@dataclass(frozen=True)
class Settings:
    """What the selection does. Only the fields in :meth:`artifact_settings` change an artifact."""

    backend: str = "auto"
    candidates: tuple[str, ...] = tuple(BACKENDS)
    precision: str = "fp32"
    compile_mode: str = "default"
    warmup: int = 3
    runs: int = 20
    batch_size: int = 8
    seq_len: int = 128
    threads: int = 1
    device: str = "cpu"
    enabled: bool = True
    quality_pairs: int | None = None  # Q&A pairs for the int8 quality check (None: all)

    def tried(self) -> list[tuple[str, str]]:
        """(backend, precision) pairs this selection builds: fp32 everywhere, plus the allowed lower precision."""
        if not self.enabled:
            return [("eager", "fp32")]
        names = [self.backend] if self.backend != "auto" else list(self.candidates)
        pairs = []
        for name in names:
            for precision in dict.fromkeys(("fp32", self.precision)):
                if precision in BACKENDS[name].precisions:
                    pairs.append((name, precision))
        return pairs

    def artifact_settings(self, backend: str, precision: str) -> dict:
        """The settings one candidate's artifact is built from (its cache key's ``settings``)."""
        out = {"precision": precision, "device": self.device, "threads": self.threads}
        if backend == "compile":
            out.update(mode=self.compile_mode, dynamic=True)
        if backend in ("onnxruntime", "onnxruntime-cuda", "tensorrt", "onnxruntime-int8"):
            out.update(dynamic_axes=["batch", "sequence"])
        if backend in LIBRARY_BACKENDS:
            out.update(file=_library_file(backend, precision))
            if backend == "st-onnx" and precision == "fp32":
                out.update(optimization=ST_ONNX_OPTIMIZATION)
            if backend == "st-openvino" and precision == "int8":
                out.update(calibration=calibration_fingerprint())
        return out

    def selection_settings(self) -> dict:
        """Everything the decision depends on (the selection's cache key): what was tried and how it was timed."""
        return {"tried": self.tried(), "compile_mode": self.compile_mode, "warmup": self.warmup, "runs": self.runs,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "threads": self.threads,
                "device": self.device, "quality_pairs": self.quality_pairs}


def _whole(env: Mapping[str, str], var: str, default: int | None, low: int) -> int | None:
    raw = env.get(var, "").strip()
    if not raw:
        return default
    if not raw.lstrip("-").isdigit() or int(raw) < low:
        raise ConfigError(f"{var}={raw!r}: use {ENV_VARS[var]}")
    return int(raw)


def settings_from_env(env: Mapping[str, str] | None = None, **defaults) -> Settings:
    """:class:`Settings` from ``EMBED_*`` variables (see :data:`ENV_VARS`), over ``defaults``.

    Raises :class:`ConfigError` naming the variable for an unknown backend or precision, a
    precision the chosen backend cannot run, or a count that is not a whole number.
    """
    env = os.environ if env is None else env
    base = Settings(**defaults)
    flag = env.get("EMBED_OPTIMIZE", "").strip().lower()
    if flag and flag not in ("0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"EMBED_OPTIMIZE={flag!r}: use {ENV_VARS['EMBED_OPTIMIZE']}")
    backend = env.get("EMBED_BACKEND", "").strip().lower() or base.backend
    if backend != "auto" and backend not in BACKENDS:
        raise ConfigError(f"EMBED_BACKEND={backend!r} is not a backend: use {ENV_VARS['EMBED_BACKEND']}")
    raw_candidates = env.get("EMBED_CANDIDATES", "").strip()
    candidates = tuple(c.strip().lower() for c in raw_candidates.split(",") if c.strip()) if raw_candidates \
        else base.candidates
    unknown = [c for c in candidates if c not in BACKENDS]
    if unknown or not candidates:
        raise ConfigError(f"EMBED_CANDIDATES={raw_candidates!r}: {unknown or 'empty'}; use backends from "
                          + ", ".join(BACKENDS))
    precision = env.get("EMBED_PRECISION", "").strip().lower() or base.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"EMBED_PRECISION={precision!r}: use {ENV_VARS['EMBED_PRECISION']}")
    if backend != "auto" and not any(p in BACKENDS[backend].precisions for p in ("fp32", precision)):
        raise ConfigError(f"EMBED_BACKEND={backend} runs {'/'.join(BACKENDS[backend].precisions)} only: set "
                          f"EMBED_PRECISION={BACKENDS[backend].precisions[0]} to allow it (now {precision})")
    if backend != "auto" and precision != "fp32" and precision not in BACKENDS[backend].precisions:
        able = [b.name for b in BACKENDS.values() if precision in b.precisions]
        raise ConfigError(f"EMBED_PRECISION={precision} with EMBED_BACKEND={backend}: {backend} runs "
                          f"{'/'.join(BACKENDS[backend].precisions)} only; backends that run {precision}: {', '.join(able)}")
    mode = env.get("EMBED_COMPILE_MODE", "").strip().lower() or base.compile_mode
    if mode not in COMPILE_MODES:
        raise ConfigError(f"EMBED_COMPILE_MODE={mode!r}: use {ENV_VARS['EMBED_COMPILE_MODE']}")
    device = env.get("EMBED_DEVICE", "").strip().lower() or base.device
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"EMBED_DEVICE={device!r}: use {ENV_VARS['EMBED_DEVICE']}")
    return dataclasses.replace(
        base, backend=backend, candidates=candidates, precision=precision, compile_mode=mode, device=device,
        enabled=flag not in ("0", "false", "no"), warmup=_whole(env, "EMBED_WARMUP", base.warmup, 0),
        runs=_whole(env, "EMBED_RUNS", base.runs, 1), batch_size=_whole(env, "EMBED_BATCH_SIZE", base.batch_size, 1),
        seq_len=_whole(env, "EMBED_SEQ_LEN", base.seq_len, 1),
        quality_pairs=_whole(env, "EMBED_QUALITY_PAIRS", base.quality_pairs, 2))


# --- what can run here --------------------------------------------------------------------

def availability(backend: str, precision: str, device: str = "cpu") -> Capability:
    """Whether ``backend`` can run ``precision`` on ``device`` here, and if not, why not."""
    import importlib.util

    import torch
    if backend not in BACKENDS:
        return Capability(False, f"unknown backend {backend!r}")
    if precision not in BACKENDS[backend].precisions:
        return Capability(False, f"{backend} does not run {precision}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        return Capability(False, "EMBED_DEVICE=cuda but torch sees no CUDA GPU")
    if backend in ("eager", "compile"):
        if precision == "fp16" and device != "cuda":
            return Capability(False, "fp16 is served on a GPU here; on a CPU it is emulated (lab 05)")
        if backend == "compile":
            from .hardware import cpp_compiler
            if device == "cpu" and not cpp_compiler().ok:
                return Capability(False, cpp_compiler().reason)
        return Capability(True, f"torch {torch.__version__} on {device}")
    if backend in LIBRARY_BACKENDS:
        return _library_availability(backend, precision, device)
    import onnxruntime as ort
    providers = ort.get_available_providers()
    if backend in ("onnxruntime", "onnxruntime-int8", "torch-int8"):
        if device != "cpu":
            return Capability(False, f"{backend} runs on the CPU; EMBED_DEVICE={device}")
        return Capability(True, f"onnxruntime {ort.__version__}, CPUExecutionProvider" if backend != "torch-int8"
                          else "torch.ao dynamic quantization (fbgemm/onednn kernels)")
    if backend == "onnxruntime-cuda":
        if "CUDAExecutionProvider" not in providers or device != "cuda":
            return Capability(False, "needs onnxruntime-gpu (CUDAExecutionProvider) and a CUDA GPU; this "
                                     f"onnxruntime {ort.__version__} has {', '.join(providers)}"
                                     + ("" if cuda else " and torch sees no GPU"))
        return Capability(True, "onnxruntime CUDAExecutionProvider")
    if backend == "tensorrt":
        if "TensorrtExecutionProvider" in providers and device == "cuda":
            return Capability(True, "onnxruntime TensorrtExecutionProvider")
        trt = importlib.util.find_spec("tensorrt") is not None
        return Capability(False, "needs an NVIDIA GPU, the TensorRT libraries and onnxruntime-gpu built with the "
                                 "TensorrtExecutionProvider (or torch-tensorrt); here: "
                                 + ("no CUDA GPU, " if not cuda else "")
                                 + ("no tensorrt package, " if not trt else "")
                                 + f"providers {', '.join(providers)}")
    return Capability(False, "no such backend")


def _importable(module: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a missing parent package
        return False


def _library_availability(backend: str, precision: str, device: str) -> Capability:
    """sentence-transformers' backends run where their extra is installed, on the CPU."""
    from importlib import metadata
    extra, module, dist, pin = LIBRARY_BACKENDS[backend]
    if not _importable("sentence_transformers") or not _importable(module):
        import transformers
        return Capability(False, f"needs sentence-transformers[{extra}] ({dist}), not installed here "
                                 f"(transformers {transformers.__version__}); as of 2026-12 {dist} needs {pin}, "
                                 f"so it is the dependency group {backend}, synced into an environment of its own "
                                 "(README, 'sentence-transformers' own backends')")
    if device != "cpu":
        return Capability(False, f"{backend} is measured on the CPU here; EMBED_DEVICE={device}")
    if backend == "st-openvino" and precision == "int8" and not _importable("datasets"):
        return Capability(False, "its static quantization reads the calibration texts with `datasets`, not installed")
    return Capability(True, f"sentence-transformers {metadata.version('sentence-transformers')}, "
                            f"{dist} {metadata.version(dist)}")


# --- the model files a server reads (helpers.deployment.prepare_context) ------------------

@dataclass
class ModelFiles:
    """A server's model folder: ``torch/`` weights, ``tokenizer.json``, ``serving.json``."""

    folder: Path
    config: dict
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    weights: str       # SHA-256 of the torch weights
    exported: dict = field(default_factory=dict)  # this object's ONNX export, reused by the int8 build

    @classmethod
    def read(cls, folder: str | Path) -> "ModelFiles":
        import json

        from transformers import PreTrainedTokenizerFast
        folder = Path(folder)
        if not (folder / "serving.json").is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no serving.json): build one with "
                                    "helpers.deployment.prepare_context")
        config = json.loads((folder / "serving.json").read_text(encoding="utf-8"))
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                            pad_token=config["pad_token"])
        digest = weights_digest(folder / config["torch_dir"])
        return cls(folder, config, tokenizer, digest)

    def torch_model(self, device: str = "cpu", dtype=None):
        import torch
        from transformers import AutoModel

        from .models import _quiet_transformers
        with _quiet_transformers():
            model = AutoModel.from_pretrained(self.folder / self.config["torch_dir"]).eval()
        return model.to(device=device, dtype=dtype or torch.float32)

    def batch(self, texts: Sequence[str], *, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """int64 (input_ids, attention_mask): padded to the longest text, or to exactly ``seq_len``."""
        padding = "max_length" if seq_len else True
        limit = int(seq_len or self.config["max_tokens"])
        out = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=limit, return_tensors="np")
        return out["input_ids"].astype(np.int64), out["attention_mask"].astype(np.int64)


def torch_runner(model, device: str = "cpu") -> Runner:
    import torch
    import torch.nn.functional as F

    from .models import mean_pool

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        i, m = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        with torch.inference_mode():
            hidden = model(input_ids=i, attention_mask=m)[0]
            return F.normalize(mean_pool(hidden.float(), m), p=2, dim=1).cpu().numpy()
    return run


# --- building and loading each backend's artifact -----------------------------------------

def _export(files: ModelFiles, path: Path) -> None:
    import shutil

    import torch

    from .onnx_models import export_onnx
    earlier = files.exported.get("fp32")
    if earlier is not None and earlier.is_file():  # one selection exports once; the int8 file starts from it
        shutil.copyfile(earlier, path)
        return
    ids, mask = files.batch(["an example sentence to trace", "and a second one"], seq_len=16)
    export_onnx(files.torch_model(), {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)},
                path, external_data=False)
    from .onnx_models import scratch_dir
    keep = scratch_dir("backend-export-") / "fp32.onnx"  # the cache renames ``path``'s folder: keep a copy
    shutil.copyfile(path, keep)
    files.exported["fp32"] = keep


def build_artifact(backend: str, precision: str, files: ModelFiles, settings: Settings, folder: Path) -> dict:
    """Write ``backend``'s artifact into ``folder``; return facts about it for the manifest."""
    if backend in ("onnxruntime", "onnxruntime-cuda", "tensorrt"):
        _export(files, folder / "encoder.onnx")
        return {"file": "encoder.onnx"}
    if backend == "onnxruntime-int8":
        from .hardware import cpu_int8_dot
        from .onnx_models import quantize_int8
        _export(files, folder / "fp32.onnx")
        seven_bit = not cpu_int8_dot().ok  # lab 06: full-range per-channel weights saturate without VNNI
        quantize_int8(folder / "fp32.onnx", folder / "encoder-int8.onnx", per_channel=True, reduce_range=seven_bit)
        (folder / "fp32.onnx").unlink()
        return {"file": "encoder-int8.onnx", "weights": "7-bit (no VNNI here)" if seven_bit else "8-bit"}
    if backend == "compile":
        import torch
        model = torch.compile(files.torch_model(settings.device, _torch_dtype(precision)), mode=_mode(settings),
                              dynamic=True)
        run = torch_runner(model, settings.device)
        for texts in (["one"], ["one", "two texts of another length"]):
            run(*files.batch(texts))
        run(*files.batch(["a text"] * settings.batch_size, seq_len=settings.seq_len))
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is not None:
            (folder / "compile-cache.bin").write_bytes(artifacts[0])
        return {"file": "compile-cache.bin" if artifacts else None, "mode": settings.compile_mode}
    if backend in LIBRARY_BACKENDS:
        return _build_library(backend, precision, files, settings, folder)
    return {"file": None}  # eager, torch-int8: built from the weights at load, in well under a second


def _library_file(backend: str, precision: str) -> str:
    """Where the library's export functions write each artifact, inside ``st/``."""
    from .hardware import ort_quantization_target
    return {("st-onnx", "fp32"): f"onnx/model_{ST_ONNX_OPTIMIZATION}.onnx",
            ("st-onnx", "int8"): f"onnx/model_int8_{ort_quantization_target()}.onnx",
            ("st-openvino", "fp32"): "openvino/openvino_model.xml",
            ("st-openvino", "int8"): "openvino/openvino_model_qint8_quantized.xml"}[backend, precision]


def _build_library(backend: str, precision: str, files: ModelFiles, settings: Settings, folder: Path) -> dict:
    """sentence-transformers' own export of ``files``' weights into ``folder/st``, as its documentation
    shows it (``SentenceTransformer(path, backend=...)``, then its ``export_*`` functions)."""
    import shutil

    import sentence_transformers as st

    from .models import _quiet_transformers
    target = folder / "st"
    shutil.copytree(files.folder / files.config["torch_dir"], target)
    files.tokenizer.save_pretrained(str(target))
    kind = "onnx" if backend == "st-onnx" else "openvino"
    with _quiet_transformers():
        model = st.SentenceTransformer(str(target), backend=kind, device="cpu")  # exports the weights
        model.save(str(target))
        facts: dict = {}
        if backend == "st-onnx" and precision == "fp32":
            st.export_optimized_onnx_model(model, ST_ONNX_OPTIMIZATION, str(target))
            facts = {"optimization": ST_ONNX_OPTIMIZATION}
        elif backend == "st-onnx":
            from .hardware import ort_quantization_target
            preset = ort_quantization_target()
            st.export_dynamic_quantized_onnx_model(model, preset, str(target), file_suffix=f"int8_{preset}")
            facts = {"preset": preset}
        elif precision == "int8":
            facts = _openvino_int8(st, model, target, folder)
    kept = target / _library_file(backend, precision)
    if not kept.is_file():
        raise RuntimeError(f"sentence-transformers wrote no {kept.relative_to(target)} (its files: "
                           + ", ".join(sorted(str(p.relative_to(target)) for p in target.rglob("*.*"))) + ")")
    for path in [*target.glob("*.safetensors"), *(target / kind).glob("*")]:  # the one file the runner loads
        if path.is_file() and path.stem != kept.stem:                        # (an OpenVINO .xml with its .bin)
            path.unlink()
    return {"file": str(kept.relative_to(folder)), **facts}


CALIBRATION_TEXTS = 128


def calibration_texts() -> list[str]:
    """The texts static int8 is calibrated on: :data:`CALIBRATION_TEXTS` of the course's *training*
    texts (one Q&A cluster in three, :func:`helpers.compress.split_pairs`), evenly spread over them
    so that every topic is represented. (The library's default set, GLUE/SST-2, is on the Hub.)"""
    from .compress import split_pairs
    from .quality import load_qa_pairs
    texts, _ = split_pairs(load_qa_pairs())
    picks = np.linspace(0, len(texts) - 1, min(CALIBRATION_TEXTS, len(texts))).round().astype(int)
    return [texts[i] for i in dict.fromkeys(picks.tolist())]


def calibration_fingerprint() -> dict:
    """How many calibration texts and a SHA-256 of them: part of the int8 artifact's cache key."""
    import hashlib
    texts = calibration_texts()
    return {"texts": len(texts), "sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()}


def _openvino_int8(st, model, target: Path, folder: Path) -> dict:
    """Static int8 needs activation ranges from example inputs (:func:`calibration_texts`), read by
    ``datasets`` from a local CSV: optimum-intel loads its calibration set by name."""
    import csv
    import shutil

    from optimum.intel import OVQuantizationConfig

    texts = calibration_texts()
    calibration = folder / "calibration"
    calibration.mkdir()
    with open(calibration / "train.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    st.export_static_quantized_openvino_model(model, OVQuantizationConfig(num_samples=len(texts)), str(target),
                                              dataset_name=str(calibration), dataset_config_name="default",
                                              dataset_split="train", column_name="text")
    shutil.rmtree(calibration)
    return {"calibration": f"{len(texts)} training texts"}


def _torch_dtype(precision: str):
    import torch
    return torch.float16 if precision == "fp16" else torch.float32


def _mode(settings: Settings):
    return None if settings.compile_mode == "default" else settings.compile_mode


def load_runner(backend: str, precision: str, files: ModelFiles, settings: Settings, folder: Path | None) -> Runner:
    """A :data:`Runner` for ``backend`` from its cached artifact in ``folder``."""
    if backend in ("onnxruntime", "onnxruntime-cuda", "tensorrt", "onnxruntime-int8"):
        from .onnx_models import OUTPUT_NAME, ort_session
        name = "encoder-int8.onnx" if backend == "onnxruntime-int8" else "encoder.onnx"
        trt = ("TensorrtExecutionProvider", {"trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
                                             "trt_engine_cache_path": str(folder)})  # the engine is cached beside its file
        provider_list = {"onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                         "tensorrt": [trt, "CUDAExecutionProvider", "CPUExecutionProvider"]
                         }.get(backend, ["CPUExecutionProvider"])
        session = ort_session(folder / name, threads=settings.threads, provider_list=provider_list)
        wanted = provider_list[0] if isinstance(provider_list[0], str) else provider_list[0][0]
        if session.get_providers()[0] != wanted:  # ONNX Runtime falls back silently when a provider cannot load
            raise RuntimeError(f"ONNX Runtime could not use {wanted} (it fell back to {session.get_providers()[0]})")

        def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})[0]
        return run
    if backend in LIBRARY_BACKENDS:
        return _load_library(backend, precision, settings, folder)
    if backend == "torch-int8":
        import torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated (torchao replaces it: lab 03)
            model = torch.ao.quantization.quantize_dynamic(files.torch_model(), {torch.nn.Linear}, dtype=torch.qint8)
        return torch_runner(model)
    import torch
    model = files.torch_model(settings.device, _torch_dtype(precision))
    if backend == "compile":
        cache = folder / "compile-cache.bin" if folder is not None else None
        if cache is not None and cache.is_file():
            torch.compiler.load_cache_artifacts(cache.read_bytes())
        model = torch.compile(model, mode=_mode(settings), dynamic=True)
    return torch_runner(model, settings.device)


# --- judging a candidate --------------------------------------------------------------------

def _load_library(backend: str, precision: str, settings: Settings, folder: Path) -> Runner:
    """The library's model from its artifact, at the settings' thread count, called as the library
    calls it (its Transformer and Pooling modules), normalised like every other candidate."""
    import sentence_transformers as st
    import torch
    import torch.nn.functional as F

    from .models import _quiet_transformers
    file = _library_file(backend, precision)
    if backend == "st-onnx":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = settings.threads, 1
        # as helpers.onnx_models.ort_session does: idle workers that busy-wait steal the cores the
        # next variant timed needs (interleaved timing), and make it look slow
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        kwargs = {"file_name": file, "provider": "CPUExecutionProvider", "session_options": options}
    else:  # OpenVINO's CPU plugin computes in bf16 by default where the CPU has it; both candidates ask for f32
        # (int8: the layers it leaves unquantized), so that they differ from eager only by what their names say
        kwargs = {"file_name": file, "ov_config": {"INFERENCE_NUM_THREADS": str(settings.threads),
                                                   "INFERENCE_PRECISION_HINT": "f32"}}
    with _quiet_transformers():
        model = st.SentenceTransformer(str(folder / "st"), backend="onnx" if backend == "st-onnx" else "openvino",
                                       device="cpu", model_kwargs=kwargs)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
        return F.normalize(out["sentence_embedding"].float(), p=2, dim=1).numpy()
    return run


REFERENCE = "eager (reference)"
PARITY_TEXTS = (
    "What temperature kills bacteria in chicken?",
    "Cook poultry until the thickest part reads 74 degrees Celsius on a thermometer.",
    "Why is the sky blue?",
    "Sunlight scatters off air molecules, and the shorter blue wavelengths scatter far more than red ones, "
    "so blue light reaches the eye from every direction of the sky.",
    "ok",
)


def parity_batches(files: ModelFiles, settings: Settings) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shapes a candidate was neither built nor timed with: one short text, three of mixed lengths
    (padding inside the batch), and all five padded to a longer length than the serving shape."""
    texts = list(PARITY_TEXTS)
    return [files.batch(texts[2:3]), files.batch(texts[:3]), files.batch(texts, seq_len=min(settings.seq_len + 7,
                                                                                            files.config["max_tokens"]))]


def parity_error(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float:
    """Largest ``1 - cosine`` between a candidate's embeddings and the reference's, over every text;
    ``inf`` for a wrong shape or a value that is not finite (NaN must fail, not pass ``nan > tol``)."""
    worst = 0.0
    for out, ref in zip(outputs, references):
        out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
        if out.shape != ref.shape or not np.isfinite(out).all():
            return float("inf")
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        worst = max(worst, float((1 - cos).max()))
    return worst


@dataclass
class Outcome:
    """One candidate's fate in a selection."""

    name: str
    backend: str
    precision: str
    status: str = "pending"  # chosen, rejected
    reason: str = ""
    build_s: float | None = None
    cached: bool = False
    parity_error: float | None = None
    quality: dict = field(default_factory=dict)
    median_ms: float | None = None
    p25_ms: float | None = None
    p75_ms: float | None = None

    def row(self) -> dict:
        return {"candidate": self.name, "backend": self.backend, "precision": self.precision, "status": self.status,
                "reason": self.reason,
                "build (s)": self.build_s, "from cache": self.cached, "parity (1 - cos)": self.parity_error,
                **self.quality, "median (ms)": self.median_ms, "p25 (ms)": self.p25_ms, "p75 (ms)": self.p75_ms}


def _name(backend: str, precision: str) -> str:
    return backend if precision == BACKENDS[backend].precisions[0] else f"{backend} ({precision})"


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def select(files: ModelFiles, settings: Settings, cache: ArtifactCache, *, force: bool = False,
           progress: bool = True, runners_out: dict | None = None, timings_out: dict | None = None) -> dict:
    """Build, check and time every candidate of ``settings``; return the report (a JSON-able dict).

    The report holds the chosen candidate, every candidate's outcome with its reason, the measured
    speedup of the chosen one against eager fp32 (median and the quartile range), its parity error
    and quality, the settings and the environment. Raises ``RuntimeError`` with every reason when
    no candidate passes. ``runners_out``, when given, receives every passing candidate's runner and
    the reference's (``"eager (reference)"``), for a benchmark that goes on timing them; ``timings_out``
    receives every timed candidate's :class:`helpers.Timing` (a table's raw material).
    """
    import torch

    from .quality import load_qa_pairs, quality_figures
    from .timing import compare
    env = environment_facts(settings.device, settings.threads)
    started = time.perf_counter()
    torch.set_num_threads(settings.threads)
    reference = torch_runner(files.torch_model(settings.device), settings.device)
    checks = parity_batches(files, settings)
    expected = [reference(*b) for b in checks]
    pairs = load_qa_pairs(settings.quality_pairs)
    texts = [p.question for p in pairs] + [p.answer for p in pairs]

    def embed_all(run: Runner) -> torch.Tensor:
        chunks = [run(*files.batch(texts[i:i + 16])) for i in range(0, len(texts), 16)]
        return torch.from_numpy(np.concatenate(chunks)).float()

    reference_texts = embed_all(reference)
    serving = files.batch([p.answer for p in pairs][:settings.batch_size] * settings.batch_size,
                          seq_len=settings.seq_len)
    serving = (serving[0][:settings.batch_size], serving[1][:settings.batch_size])
    outcomes: list[Outcome] = []
    runners: dict[str, Runner] = {}
    failed: dict[str, Runner] = {}  # ran, but parity or quality failed: timed too, to show what it would have bought
    tried = settings.tried()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(tried, desc="building candidates", unit="candidate", leave=False)
    for backend, precision in tried:
        outcome = Outcome(_name(backend, precision), backend, precision)
        outcomes.append(outcome)
        if bar is not None:
            bar.set_postfix_str(outcome.name)
        try:
            can = availability(backend, precision, settings.device)
            if not can.ok:
                outcome.status, outcome.reason = "rejected", f"unavailable: {can.reason}"
                continue
            key_settings = settings.artifact_settings(backend, precision)
            key = cache_key(files.weights, backend, key_settings, env)
            inputs = {"weights": files.weights, "backend": backend, "settings": key_settings, "environment": env}
            try:
                entry = cache.get_or_build(key, lambda folder: build_artifact(backend, precision, files, settings, folder),
                                           inputs=inputs, force=force)
                run = load_runner(backend, precision, files, settings, entry.path)
            except Exception as exc:  # noqa: BLE001 - any failure is a rejection with its reason
                outcome.status, outcome.reason = "rejected", f"build failed: {_short(exc)}"
                continue
            outcome.build_s, outcome.cached = entry.build_s, not entry.built
            try:
                outputs = [run(*b) for b in checks]
                embedded = embed_all(run)
            except Exception as exc:  # noqa: BLE001
                outcome.status, outcome.reason = "rejected", f"failed to run: {_short(exc)}"
                continue
            outcome.parity_error = parity_error(outputs, expected)
            figures = quality_figures(embedded, reference_texts, len(pairs))
            outcome.quality = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}
            if precision == "int8":
                test = _paired(embedded, reference_texts, len(pairs))
                if not figures["cosine mean"] >= INT8_MIN_COSINE or test.real and test.difference < 0:
                    outcome.status = "rejected"
                    outcome.reason = (f"quality failed: cosine mean {figures['cosine mean']:.3f} (needs {INT8_MIN_COSINE}), "
                                      f"recall@1 {figures['recall@1']:.3f}: {test.short()}")
                    failed[outcome.name] = run
                    continue
            elif not outcome.parity_error <= TOLERANCE[precision]:
                outcome.status = "rejected"
                outcome.reason = f"parity failed: 1 - cosine {outcome.parity_error:.1e} > tolerance {TOLERANCE[precision]:.0e}"
                failed[outcome.name] = run
                continue
            runners[outcome.name] = run
        finally:
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    if not runners:
        raise RuntimeError("no candidate passed: " + "; ".join(f"{o.name}: {o.reason}" for o in outcomes))
    baseline_name = REFERENCE
    timed = {name: (lambda run=run: run(*serving)) for name, run in {**runners, **failed}.items()}
    timed[baseline_name] = lambda: reference(*serving)
    timings = compare(timed, runs=settings.runs, warmup=settings.warmup, threads=settings.threads,
                      device=settings.device, progress=progress)
    for outcome in outcomes:
        if outcome.name in timings:
            t = timings[outcome.name]
            outcome.median_ms, outcome.p25_ms, outcome.p75_ms = t.median_ms, t.p25_ms, t.p75_ms
    best = min(runners, key=lambda name: timings[name].median)
    for outcome in outcomes:
        if outcome.name == best:
            outcome.status, outcome.reason = "chosen", "fastest that passed"
        elif outcome.name in runners:
            outcome.status = "rejected"
            outcome.reason = f"slower: {outcome.median_ms:.2f} ms median vs {timings[best].median_ms:.2f} ms"
        elif outcome.name in failed:
            outcome.reason += (f"; it ran at {outcome.median_ms:.2f} ms median "
                               f"({timings[baseline_name].median / timings[outcome.name].median:.2f}x eager): not served")
    if timings_out is not None:
        timings_out.update(timings)
    if runners_out is not None:
        runners_out.update(runners)
        runners_out[baseline_name] = reference
    base, chosen = timings[baseline_name], timings[best]
    winner = next(o for o in outcomes if o.name == best)
    return {
        "model": files.config["model"], "device": env["device_name"], "backend": winner.backend,
        "precision": winner.precision, "candidate": best,
        "speedup": {"median": base.median / chosen.median, "low": base.p25_ms / chosen.p75_ms,
                    "high": base.p75_ms / chosen.p25_ms},
        "eager_ms": {"median": base.median_ms, "p25": base.p25_ms, "p75": base.p75_ms},
        "chosen_ms": {"median": chosen.median_ms, "p25": chosen.p25_ms, "p75": chosen.p75_ms},
        "parity_error": winner.parity_error, "quality": winner.quality,
        "candidates": [o.row() for o in outcomes],
        "rejected": {o.name: o.reason for o in outcomes if o.status != "chosen"},
        "select_s": time.perf_counter() - started, "shape": [settings.batch_size, settings.seq_len],
        "settings": dataclasses.asdict(settings), "environment": env,
    }


def _paired(embedded, reference, n):
    from .quality import paired_recall_test, retrieval_ranks
    return paired_recall_test(retrieval_ranks(reference[:n], reference[n:]).numpy() == 1,
                              retrieval_ranks(embedded[:n], embedded[n:]).numpy() == 1)


# --- what a server calls at start ---------------------------------------------------------

@dataclass
class Served:
    """The runner a server uses, a one-line description, and the report behind ``/optimization``."""

    run: Runner
    description: str
    report: dict


def serve(model_dir: str | Path, settings: Settings, *, cache_dir: str | Path | None = None,
          force: bool = False, progress: bool = False) -> Served:
    """The chosen backend for ``model_dir``: from the cache when the previous decision and its
    artifact are valid (``report["source"] == "cache"``), else selected now and cached (``"built"``)."""
    start = time.perf_counter()
    files = ModelFiles.read(model_dir)
    cache = ArtifactCache(cache_dir or default_cache_dir())
    env = environment_facts(settings.device, settings.threads)
    key = cache_key(files.weights, "selection", settings.selection_settings(), env)
    entry = None if force else cache.get(key)
    if entry is not None:
        report = dict(entry.info)
        backend, precision = report["backend"], report["precision"]
        artifact_settings = settings.artifact_settings(backend, precision)
        artifact_key = cache_key(files.weights, backend, artifact_settings, env)
        artifact = cache.get_or_build(artifact_key, lambda folder: build_artifact(backend, precision, files, settings, folder),
                                      inputs={"weights": files.weights, "backend": backend,
                                              "settings": artifact_settings, "environment": env})
        run = load_runner(backend, precision, files, settings, artifact.path)
        source = "cache" if not artifact.built else "cache (decision), artifact rebuilt"
    else:
        report = select(files, settings, cache, force=force, progress=progress)
        cache.get_or_build(key, lambda folder: report, force=True)
        winner = report["candidate"]
        built = next(row for row in report["candidates"] if row["candidate"] == winner)
        backend, precision = report["backend"], report["precision"]
        run = load_runner(backend, precision, files, settings, cache.path(
            cache_key(files.weights, backend, settings.artifact_settings(backend, precision), env)))
        source = "built" if not built["from cache"] else "built (decision), artifacts from cache"
    report = {**report, "source": source, "start_s": time.perf_counter() - start, "cache_problems": list(cache.problems)}
    description = (f"{report['candidate']} on {settings.device}, chosen by measurement "
                   f"({report['speedup']['median']:.2f}x eager), {settings.threads} threads")
    return Served(run, description, report)


COLUMNS = ("precision", "status", "speedup vs eager", "median (ms)", "p25 (ms)", "p75 (ms)", "parity (1 - cos)", "cosine mean",
           "cosine min", "recall@1", "recall@1 vs reference", "build (s)", "from cache", "reason")


def candidate_table(report: Mapping) -> "pandas.DataFrame":  # noqa: F821
    """The report's candidates as a table, with each one's speedup against eager fp32 (median over median)."""
    import pandas as pd
    table = pd.DataFrame(report["candidates"]).set_index("candidate")
    table["speedup vs eager"] = report["eager_ms"]["median"] / table["median (ms)"]
    return table[[c for c in COLUMNS if c in table.columns]]
