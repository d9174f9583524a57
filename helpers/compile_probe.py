"""``python -m helpers.compile_probe``: load, compile and run the encoder once in a fresh process.

Used by :func:`helpers.compilation.time_compile_in_new_process`; prints one JSON line with
how long each stage took.  Standard error is kept by the caller, not shown in the notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

SPAWNED_ENV = "COURSE_PROBE_SPAWNED_AT"  # wall-clock time.time() when the parent started this process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import torch

    from helpers.models import load_encoder
    if args.threads:
        torch.set_num_threads(args.threads)
    spawned = float(os.environ.get(SPAWNED_ENV, "nan"))
    imported = time.perf_counter()
    started_s = time.time() - spawned  # interpreter start + imports (torch, transformers)
    encoder = load_encoder(args.model, verbose=False)
    inputs = encoder.tokenizer(["a sentence to compile for"] * args.batch_size, padding="max_length",
                               truncation=True, max_length=args.seq_len, return_tensors="pt")
    loaded = time.perf_counter()
    compiled = torch.compile(encoder.model)
    with torch.inference_mode():
        compiled(**inputs)
        first = time.perf_counter()
        steady = []
        for _ in range(5):
            start = time.perf_counter()
            compiled(**inputs)
            steady.append(time.perf_counter() - start)
    print(json.dumps({"model": encoder.name, "startup_s": started_s, "load_s": loaded - imported,
                      "first_call_s": first - loaded, "steady_ms": 1000 * statistics.median(steady)}))


if __name__ == "__main__":
    main()
