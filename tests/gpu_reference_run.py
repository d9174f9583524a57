"""The course's one prepared GPU reference run: the five checks a first GPU run of labs 04 and 05 must make.

The GPU code paths of labs 04 (CUDA graphs, kernel counts, compile modes) and 05 (peaks, MFU)
cannot run on the course's CPU machines. This script runs their substance on a GPU within the
GPU machine's budget (15 minutes in all, 10 per command, torch but no papermill or ipykernel
there), each section under its own time cap, and writes what it measured:

1. **graphs**: CUDA-graph capture parity (max |graph - eager|) and replay speed against eager;
2. **kernels**: profiler kernel counts per call for eager and for replay: equal, non-zero integers;
3. **sections**: wall time of each section at the smoke and the full sizes, against nbgrader's
   120 s cell limit (the labs' GPU cells do this work);
4. **peaks**: measured matrix-multiplication peaks in fp32, TF32, bf16 and fp16 against the
   datasheet, and each precision's MFU and roofline floor for the model;
5. **overhead**: per-op host cost, and eager against graph replay against ``torch.compile``
   (``default`` and ``reduce-overhead``) at batch 1.

The model is the reference architecture with random weights (``transformers.MPNetConfig()``:
MPNet-base's shapes and FLOPs): speed, parity and kernel counts do not depend on trained
weights, and the GPU machine has neither the course's weight packages nor a model hub.

Run on the GPU machine, from the repository root (the device tool copies the checkout):

    PYTHONPATH=. python3 tests/gpu_reference_run.py --out "$OUT"

Dry run on a CPU (what the tests run): every code path that needs no CUDA, on a tiny model:

    uv run python tests/gpu_reference_run.py --dry-run --out "$(mktemp -d)"

Writes ``gpu_reference.json`` (every figure, each section's wall time and status) and
``results.csv`` (rows in :data:`helpers.results.COLUMNS`, lab ``gpu_reference``) to ``--out``.
A section that fails or runs past its cap is recorded as such and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

# Datasheet dense peaks in TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
# H100 SXM / H200: NVIDIA H100 and H200 datasheets; A100: the A100 datasheet; L4, T4 likewise.
DATASHEET_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 80GB HBM3": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0},
    "T4": {"fp32": 8.1, "fp16": 65.0},
}
CELL_LIMIT_S = 120  # nbgrader's per-cell timeout in the course's grading
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds``: one section's cap."""
    def _raise(signum, frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s cap")
    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 matrix products on or off inside the block (PyTorch's default is off)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def datasheet_for(name: str) -> dict:
    for key, peaks in DATASHEET_TFLOPS.items():
        if key in name:
            return {"device": key, **peaks}
    return {}


class Run:
    """Sizes and budgets for one run: the real one on a GPU, or a dry run on the CPU."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.device = "cpu" if dry else "cuda"
        self.full = {"batch": 1, "seq": 128}
        self.smoke = {"batch": 1, "seq": 32}
        self.runs = 5 if dry else 100
        self.warmup = 2 if dry else 10
        self.peak_n = 256 if dry else 8192
        self.precisions = ["fp32", "bf16"] if dry else list(PRECISIONS)  # a CPU has no TF32 or fast fp16
        # Each section's cap; together 8 minutes, inside one 10-minute command on the GPU machine.
        self.caps = {"peaks": 60, "model": 60, "graphs": 60, "kernels": 60, "compiled": 150, "sections": 90}


def build_model(run: Run, layers: int | None = None):
    """MPNet-base with random weights (seeded); a 2-layer, 64-wide one in a dry run."""
    from transformers import AutoModel, MPNetConfig
    config = (MPNetConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
              if run.dry else MPNetConfig())
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval().to(run.device), config


def token_ids(config, shape: dict, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (shape["batch"], shape["seq"]), generator=generator)
    return ids.to(device)


def matmul_rate(n: int, dtype: torch.dtype, run: Run):
    """FLOP/s of one n x n x n matrix product (2 n^3 FLOPs), median of timed calls, and its Timing."""
    from helpers.timing import benchmark
    a = torch.randn(n, n, device=run.device).to(dtype)
    b = torch.randn(n, n, device=run.device).to(dtype)
    timing = benchmark(lambda: a @ b, runs=max(5, run.runs // 4), warmup=2, device=run.device, label=f"{n}^3")
    return 2 * n ** 3 / timing.median, timing


def section_peaks(run: Run, out: dict) -> dict:
    peaks = {}
    for name in run.precisions:
        with tf32(name == "tf32"):
            rate, timing = matmul_rate(run.peak_n, PRECISIONS[name], run)
        peaks[name] = {"TFLOP/s": rate / 1e12, "median_ms": timing.median_ms, "p25_ms": timing.p25_ms,
                       "p75_ms": timing.p75_ms}
    sheet = datasheet_for(out["environment"]["device_name"])
    for name, row in peaks.items():
        if name in sheet:
            row["datasheet TFLOP/s"] = sheet[name]
            row["fraction of datasheet"] = row["TFLOP/s"] / sheet[name]
    return {"n": run.peak_n, "datasheet": sheet.get("device", "not in the table"), "peaks": peaks}


def section_model(run: Run, out: dict) -> dict:
    """Each precision's forward time at the full size, interleaved; MFU and roofline floor from the peaks."""
    from helpers.roofline import counted_flops, floor_seconds, mfu
    from helpers.timing import compare
    model, config = build_model(run)
    ids = token_ids(config, run.full, run.device)
    with torch.inference_mode():
        flops = counted_flops(lambda: model(input_ids=ids))
    copies = {name: model if PRECISIONS[name] is torch.float32 else build_model(run)[0].to(PRECISIONS[name])
              for name in run.precisions}

    def forward(name):
        def call():
            with tf32(name == "tf32"), torch.inference_mode():
                return copies[name](input_ids=ids)[0]
        return call

    timings = compare({n: forward(n) for n in copies}, runs=run.runs, warmup=run.warmup, device=run.device)
    peaks = out.get("peaks", {}).get("peaks", {})
    rows = {}
    for name, timing in timings.items():
        row = {"median_ms": timing.median_ms, "p25_ms": timing.p25_ms, "p75_ms": timing.p75_ms}
        if name in peaks:
            peak = peaks[name]["TFLOP/s"] * 1e12
            row.update({"MFU": mfu(flops, timing.median, peak), "floor_ms": 1e3 * floor_seconds(flops, peak)})
            row["below floor"] = timing.median_ms < row["floor_ms"]
        rows[name] = row
    return {"GFLOP per forward": flops / 1e9, "shape": run.full, "variants": rows}


def _forward_for_graphs(run: Run):
    model, config = build_model(run)
    static_ids = token_ids(config, run.full, run.device)  # no padding: the mask check needs no host sync

    def eager():
        with torch.inference_mode():
            return model(input_ids=static_ids)[0]
    return model, eager


def section_graphs(run: Run, out: dict) -> dict:
    """Capture parity and replay speed; the kernel counts go in their own section."""
    from helpers.gpu import capture_cuda_graph
    from helpers.timing import compare
    model, eager = _forward_for_graphs(run)
    reference = eager().clone()
    if run.dry:
        return {"skipped": "CUDA graphs need CUDA (dry run): the eager forward ran", "eager shape": list(reference.shape)}
    graph, static_out = capture_cuda_graph(eager)
    graph.replay()
    torch.cuda.synchronize()
    parity = float((static_out - reference).abs().max())
    timings = compare({"eager": eager, "graph replay": graph.replay}, runs=run.runs, warmup=run.warmup,
                      device=run.device)
    rows = {k: {"median_ms": t.median_ms, "p25_ms": t.p25_ms, "p75_ms": t.p75_ms} for k, t in timings.items()}
    out.setdefault("_objects", {})["graph"] = (graph, eager)
    return {"max |graph - eager|": parity, "parity ok (<= 1e-5)": parity <= 1e-5, "timings": rows,
            "speedup": rows["eager"]["median_ms"] / rows["graph replay"]["median_ms"]}


def section_kernels(run: Run, out: dict) -> dict:
    """Kernel records per call, counted per step: eager and replay must agree, and be non-zero integers."""
    if run.dry:
        return {"skipped": "the CUDA profiler needs CUDA (dry run)"}
    from torch.profiler import ProfilerActivity, profile
    objects = out.get("_objects", {}).get("graph")
    if objects is None:
        return {"skipped": "no captured graph (the graphs section did not finish)"}
    graph, eager = objects
    with profile(activities=[ProfilerActivity.CUDA]):  # initialise CUPTI before counting
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()

    def per_step(fn, steps=3):
        counts = []
        for _ in range(steps):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            counts.append(sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA))
        return counts
    eager_counts, replay_counts = per_step(eager), per_step(graph.replay)
    steady = len(set(eager_counts)) == 1 and len(set(replay_counts)) == 1
    return {"eager per step": eager_counts, "replay per step": replay_counts,
            "equal, non-zero, steady": steady and eager_counts[0] == replay_counts[0] > 0}


def section_compiled(run: Run, out: dict) -> dict:
    """Per-op host cost, and eager vs graph replay vs torch.compile (default, reduce-overhead) at batch 1."""
    from helpers.timing import compare
    model, eager = _forward_for_graphs(run)
    with torch.inference_mode():
        eager()
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([] if run.dry else [ProfilerActivity.CUDA])
        with profile(activities=activities) as prof:
            eager()
            if not run.dry:
                torch.cuda.synchronize()
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    op_calls = sum(e.count for e in ops)
    eager_timing = compare({"eager": eager}, runs=run.runs, warmup=run.warmup, device=run.device)["eager"]
    result = {"aten op calls per forward": op_calls,
              "host us per aten op (eager wall / op calls)": 1e3 * eager_timing.median_ms / max(op_calls, 1)}
    variants = {"eager": eager}
    graph = out.get("_objects", {}).get("graph")
    if graph is not None:
        variants["graph replay"] = graph[0].replay
    compile_s = {}
    modes = ["default"] if run.dry else ["default", "reduce-overhead"]
    for mode in modes:
        torch._dynamo.reset()
        compiled = torch.compile(model, mode=mode)
        ids = token_ids(model.config, run.full, run.device)

        def call(compiled=compiled, ids=ids):
            with torch.inference_mode():
                return compiled(input_ids=ids)[0]
        start = time.perf_counter()
        call()
        if not run.dry:
            torch.cuda.synchronize()
        compile_s[mode] = time.perf_counter() - start
        variants[f"compile {mode}"] = call
    timings = compare(variants, runs=run.runs, warmup=run.warmup, device=run.device)
    result["first call (s)"] = compile_s
    result["timings"] = {k: {"median_ms": t.median_ms, "p25_ms": t.p25_ms, "p75_ms": t.p75_ms}
                         for k, t in timings.items()}
    return result


def section_sections(run: Run, out: dict) -> dict:
    """Wall time of the labs' GPU work at the smoke and full sizes, against the 120 s cell limit."""
    walls = {}
    for profile, shape in (("smoke", run.smoke), ("full", run.full)):
        start = time.perf_counter()
        model, config = build_model(run, layers=2 if profile == "smoke" else None)
        ids = token_ids(config, shape, run.device)
        with torch.inference_mode():
            for _ in range(5 if profile == "smoke" else run.runs + run.warmup):
                model(input_ids=ids)
        if not run.dry:
            torch.cuda.synchronize()
        walls[profile] = time.perf_counter() - start
    measured = {name: sec["wall_s"] for name, sec in out["sections"].items() if "wall_s" in sec}
    return {"forward loop wall (s)": walls, "section walls so far (s)": measured,
            f"over {CELL_LIMIT_S} s": [n for n, s in measured.items() if s > CELL_LIMIT_S]}


SECTIONS = {"peaks": section_peaks, "model": section_model, "graphs": section_graphs,
            "kernels": section_kernels, "compiled": section_compiled, "sections": section_sections}


def results_rows(out: dict, run: Run) -> list[dict]:
    """Rows for helpers.results' file: one per timed variant."""
    from helpers.results import COLUMNS
    env = out["environment"]
    base = {"lab": "gpu_reference", "machine": env["device_name"], "cpu_features": "", "device": run.device,
            "date": out["date"], "profile": "dry" if run.dry else "full",
            "model": "MPNet-base architecture, randomly initialised" if not run.dry else "tiny MPNet, random",
            "batch_size": run.full["batch"], "seq_len": run.full["seq"], "threads": torch.get_num_threads(),
            "runs": run.runs}
    rows = []
    for section, key in (("model", "variants"), ("graphs", "timings"), ("compiled", "timings")):
        figures = out["sections"].get(section, {}).get("result", {}).get(key, {})
        for variant, row in figures.items():
            rec = {c: None for c in COLUMNS}
            rec.update(base, variant=f"{section}: {variant}", median_ms=row["median_ms"], p25_ms=row["p25_ms"],
                       p75_ms=row["p75_ms"])
            rows.append(rec)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_reference.json and results.csv")
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny model: the code paths without CUDA")
    parser.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    run = Run(args.dry_run)
    if not run.dry and not torch.cuda.is_available():
        print("no CUDA device here: run with --dry-run on a CPU, or on the GPU machine", file=sys.stderr)
        return 2
    from helpers.hardware import runtime_environment
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"date": dt.date.today().isoformat(), "dry_run": run.dry, "torch": torch.__version__,
           "environment": {k: str(v) for k, v in runtime_environment(run.device).items()}, "sections": {}}
    started = time.perf_counter()
    for name, section in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        record: dict = {"cap_s": run.caps[name]}
        try:
            with time_cap(run.caps[name]):
                record["result"] = section(run, out)
            record["status"] = "ok"
        except SectionTimeout as exc:
            record.update(status="over its cap", error=str(exc))
        except Exception as exc:  # recorded, and the run goes on: one broken section must not cost the others
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(limit=4))
        record["wall_s"] = time.perf_counter() - t0
        out["sections"][name] = record
        if name in ("peaks",) and record["status"] == "ok":
            out["peaks"] = record["result"]
        print(f"[{time.perf_counter() - started:6.1f} s] {name}: {record['status']} in {record['wall_s']:.1f} s",
              flush=True)
    out.pop("_objects", None)
    out.pop("peaks", None)
    out["total_s"] = time.perf_counter() - started
    (args.out / "gpu_reference.json").write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")
    import pandas as pd
    from helpers.results import COLUMNS
    pd.DataFrame(results_rows(out, run), columns=COLUMNS).to_csv(args.out / "results.csv", index=False)
    failed = [n for n, s in out["sections"].items() if s["status"] != "ok"]
    print(f"wrote {args.out / 'gpu_reference.json'} and {args.out / 'results.csv'} in {out['total_s']:.0f} s; "
          f"sections not ok: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
