"""The course's shared helpers: every lab imports what it needs from here.

Modules, one job each:

* :mod:`helpers.profile`  - ``smoke`` / ``full`` run profiles (``LAB_PROFILE``)
* :mod:`helpers.timing`   - honest timing (:func:`benchmark`, interleaved :func:`compare`)
* :mod:`helpers.report`   - speedup tables and charts, speed beside quality
* :mod:`helpers.models`   - load the encoder (with offline fallbacks), sentence embeddings
* :mod:`helpers.quality`  - cosine to reference, retrieval recall@1 / MRR on the course's Q&A set
* :mod:`helpers.hardware` - device, Colab and capability facts, the environment summary
* :mod:`helpers.grading`  - clean test cells (:func:`quiet_stderr`) and the student :func:`self_check`
* :mod:`helpers.compilation`  - torch.compile: a cold cache, a second start in a fresh process
* :mod:`helpers.quantization` - where a model's bytes are, and what int8 can shrink
* :mod:`helpers.gpu`          - copy bandwidth, CUDA graphs, kernel counts, host syncs, a profiler timeline
* :mod:`helpers.precision`    - number formats, a TF32 switch
* :mod:`helpers.roofline`     - counted FLOPs, MFU, the roofline floor
* :mod:`helpers.onnx_models`  - ONNX export, what the file holds, ONNX Runtime sessions, int8
* :mod:`helpers.deployment`   - the servers' build context, running them, latency, installed size, Dockerfiles
"""

from .grading import quiet_stderr, self_check
from .hardware import (Capability, best_device, bf16_support, compute_capability, cpp_compiler,
                       environment_summary, fp16_tensor_cores, in_colab, max_autotune_gemms, runtime_environment)
from .models import (DEFAULT_MODEL, FALLBACK_MODEL, RANDOM_MPNET, Encoder, embed_module, embed_texts, encode, inputs_of_shape,
                     hub_status, load_encoder, mean_pool, quality_encoder, random_like, sentence_embeddings)
from .profile import PROFILES, Profile, get_profile
from .quality import QAPair, cosine_to_reference, load_qa_pairs, retrieval_metrics, retrieval_quality
from .report import plot_speedups, save_figure, speedup, speedup_table, styled
from .timing import Comparison, Timing, benchmark, compare

__version__ = "0.1.0"

__all__ = [
    "Capability", "Comparison", "DEFAULT_MODEL", "Encoder", "FALLBACK_MODEL", "PROFILES", "Profile",
    "QAPair", "RANDOM_MPNET", "Timing", "benchmark", "best_device", "bf16_support", "compare",
    "compute_capability", "cosine_to_reference", "cpp_compiler", "embed_module", "embed_texts", "encode", "environment_summary",
    "fp16_tensor_cores", "get_profile", "inputs_of_shape", "hub_status", "in_colab", "load_encoder", "load_qa_pairs",
    "max_autotune_gemms", "mean_pool", "plot_speedups", "quality_encoder", "quiet_stderr", "random_like", "retrieval_metrics",
    "retrieval_quality", "runtime_environment", "save_figure", "self_check", "sentence_embeddings",
    "speedup", "speedup_table", "styled",
]
