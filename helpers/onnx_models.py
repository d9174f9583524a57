"""ONNX: export the encoder, look inside the file, and run it with ONNX Runtime.

Lab 06 builds the export and the sessions step by step; lab 07 and the serving apps use
the finished versions here.  The exported graph returns what a user wants from a sentence
encoder: one unit-length embedding per sentence (mean pooling over real tokens, then L2
normalisation), so a server needs nothing but a tokenizer and ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import mean_pool

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"  # not "embedding": the exporter names a hidden value that (an SSA clash)

# ONNX Runtime's optimization levels, by the names the labs use, least to most rewriting
# ("layout", ORT_ENABLE_LAYOUT, is in newer builds: 1.31 has five levels).
LEVELS = ("disable", "basic", "extended", "layout", "all")
_LEVEL_ENUM = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


class PooledEncoder(torch.nn.Module):
    """``model`` plus pooling: (input_ids, attention_mask) -> normalised sentence embeddings."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``token_type_ids`` is accepted so a tokenizer's output can be passed as ``**batch``, and ignored:
        for single sentences it is all zeros, and MPNet has no such input."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return F.normalize(mean_pool(hidden, attention_mask), p=2, dim=1)


@contextlib.contextmanager
def quiet_export():
    """Hide the exporter's progress lines and its known-harmless warnings; errors still surface."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def export_onnx(model: torch.nn.Module, example: Mapping[str, torch.Tensor], path: str | Path, *,
                external_data: bool = True, pooled: bool = True) -> Path:
    """Export ``model`` with the current exporter (``dynamo=True``); batch and sequence stay symbolic.

    ``example`` is a tokenized batch (``input_ids``, ``attention_mask``) used to trace the
    graph; its sizes are *not* baked in.  ``external_data=False`` writes one self-contained
    file (fine below ONNX's 2 GB protobuf limit); ``True`` (the exporter's default) puts
    the weights in ``<file>.data`` beside it, and both files must travel together.
    """
    missing = [name for name in INPUT_NAMES if name not in example]
    if missing:
        raise ValueError(f"export_onnx() needs an example batch with {list(INPUT_NAMES)}; missing {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = PooledEncoder(model).eval() if pooled else model.eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dims = {0: batch, 1: sequence}
    with quiet_export():
        torch.onnx.export(module, tuple(example[name] for name in INPUT_NAMES), str(path), dynamo=True,
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME] if pooled else None,
                          dynamic_shapes={name: dims for name in INPUT_NAMES}, external_data=external_data)
    return path


def graph_dims(path: str | Path) -> dict[str, list[int | str]]:
    """Each graph input and output with its dimensions: a name (symbolic) or a number (fixed)."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    return {value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in list(graph.input) + list(graph.output)}


def describe_file(path: str | Path) -> dict:
    """What an ``.onnx`` file holds: its files and their sizes, opset, node count, most common operators."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    external = sorted({entry.value for tensor in model.graph.initializer if uses_external_data(tensor)
                       for entry in tensor.external_data if entry.key == "location"})
    files = {path.name: path.stat().st_size}
    files.update({name: (path.parent / name).stat().st_size for name in external})
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "files (bytes)": files,
        "weights in": ", ".join(external) if external else "the .onnx file itself",
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "nodes": len(model.graph.node),
        "initializers (weight tensors)": len(model.graph.initializer),
        "most common operators": ", ".join(f"{op} x{n}" for op, n in ops.most_common(6)),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
    }


def providers(preferred: Sequence[str] = ("CUDAExecutionProvider", "CPUExecutionProvider")) -> list[str]:
    """``preferred`` execution providers that this ONNX Runtime build has, in order; CPU always last."""
    import onnxruntime as ort
    available = set(ort.get_available_providers())
    chosen = [name for name in preferred if name in available and name != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


def level_of(name: str):
    """The ``onnxruntime.GraphOptimizationLevel`` called ``name`` (one of :data:`LEVELS`)."""
    import onnxruntime as ort
    if name not in _LEVEL_ENUM:
        raise ValueError(f"unknown optimization level {name!r}: use one of {list(LEVELS)}")
    level = getattr(ort.GraphOptimizationLevel, _LEVEL_ENUM[name], None)
    if level is None:
        raise ValueError(f"this ONNX Runtime ({ort.__version__}) has no {_LEVEL_ENUM[name]} level: "
                         f"use one of {[n for n in LEVELS if hasattr(ort.GraphOptimizationLevel, _LEVEL_ENUM[n])]}")
    return level


def available_levels() -> tuple[str, ...]:
    """The names in :data:`LEVELS` that the installed ONNX Runtime has, in order."""
    import onnxruntime as ort
    return tuple(n for n in LEVELS if hasattr(ort.GraphOptimizationLevel, _LEVEL_ENUM[n]))


def ort_session(path: str | Path, *, level: str = "all", provider_list: Sequence[str] | None = None,
                optimized_path: str | Path | None = None, threads: int | None = None, spinning: bool = False):
    """An ``onnxruntime.InferenceSession`` with explicit providers and optimization level.

    ``optimized_path`` makes ONNX Runtime write the graph it optimized (offline mode);
    ``threads`` sets its intra-op thread pool; ``None`` gives it the count this process set for
    torch (``helpers.use_threads`` in a lab's setup cell), never ONNX Runtime's own default of one
    thread per core: both engines are then timed with the same number of threads.
    ``spinning=False`` stops idle worker threads from busy-waiting (see the comment below).
    """
    import onnxruntime as ort
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}: export the model first")
    options = ort.SessionOptions()
    options.graph_optimization_level = level_of(level)
    options.log_severity_level = 3  # errors only: keep the hardware-specific-file warning out of test output
    if optimized_path is not None:
        # The optimized graph gets weight files of its own (<name>.data): otherwise it points at the
        # exported model's .data file by a relative path, and breaks when moved without it.
        options.optimized_model_filepath = str(optimized_path)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         Path(optimized_path).name + ".data")
    options.intra_op_num_threads = int(threads) if threads is not None else torch.get_num_threads()
    if not spinning:
        # ONNX Runtime's worker threads busy-wait after each run by default, for lower latency in a
        # process that does nothing else. Beside PyTorch or other sessions (every timing comparison
        # in the labs) that spinning steals the cores the others need, and makes them look slow.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(provider_list or providers()))


def feeds_of(batch: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A tokenized torch batch as the int64 numpy arrays an ONNX session takes."""
    return {name: batch[name].numpy().astype(np.int64) for name in INPUT_NAMES}


def session_embeddings(session, tokenizer, texts: Sequence[str], *, batch_size: int = 32,
                       max_length: int = 128) -> torch.Tensor:
    """Sentence embeddings of ``texts`` from an exported (pooled) model, as a float32 torch tensor."""
    from .models import embed_texts
    return embed_texts(lambda batch: session.run([OUTPUT_NAME], feeds_of(batch))[0], tokenizer, texts,
                       batch_size=batch_size, max_length=max_length, pooled=True)


def quantize_int8(path: str | Path, out: str | Path, *, per_channel: bool = True,
                  op_types: Sequence[str] | None = None, reduce_range: bool = False) -> Path:
    """ONNX Runtime dynamic int8 quantization: int8 weights, activations quantized at run time.

    ``op_types=None`` is ONNX Runtime's default, which quantizes ``Gather`` too: the word-embedding
    table is stored in int8 as well (the file shrinks almost 4x). ``op_types=["MatMul"]`` quantizes
    the matrix products only, as PyTorch's dynamic recipes do, and keeps the table in fp32.

    ``reduce_range=True`` stores the weights in 7 bits. ONNX Runtime multiplies uint8 activations
    by int8 weights; on an x86 CPU without an int8 dot-product instruction (no VNNI: AVX2 only, or
    AVX-512 without VNNI) its kernels use ``vpmaddubsw``, which adds two products in a saturating
    16-bit register, and full-range weights can overflow it. Per-channel scales give every row the
    full int8 range, so they overflow most: on the course's AVX2-only box per-channel int8 wrecked
    MPNet-base (cosine to fp32 near 0) and 7-bit weights kept it at 0.89 (lab 06). With VNNI
    (``helpers.cpu_int8_dot()``) nothing saturates and 7 bits only cost precision.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" hint is printed as a root-logger warning
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                         reduce_range=reduce_range,
                         op_types_to_quantize=list(op_types) if op_types is not None else None)
    finally:
        root.setLevel(level)
    return Path(out)


def _process_is_gone(pid: int) -> bool:
    """True only when no process ``pid`` exists (POSIX; on Windows nothing is ever called gone)."""
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours, or we cannot tell: keep its folder
        return False
    return False


def scratch_dir(prefix: str = "onnx-") -> Path:
    """A temporary folder for model files, removed when the Python process (the kernel) exits.

    Exported models are tens to hundreds of MB; keeping them out of the notebook's folder keeps
    them out of submissions, and removing them at exit keeps a graded class from filling a disk.
    The folder's name carries this process's id (``<prefix><pid>-<random>``): a kernel that was
    killed, or whose exit skipped the clean-up, leaves its folder behind, and the next call with
    the same prefix removes every such folder whose process no longer exists.
    """
    import atexit
    import re
    import shutil
    import tempfile
    root = Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(prefix) + r"(\d+)-")
    for old in root.glob(f"{glob_escape(prefix)}*"):
        match = pattern.match(old.name)
        if match and old.is_dir() and int(match.group(1)) != os.getpid() and _process_is_gone(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
