"""``python -m helpers.backend_cli``: choose and cache a backend, or benchmark the candidates (lab 09).

* ``optimize``: run the selection (or reuse the cached decision), print the candidates' table and
  the choice; ``--force`` rebuilds every artifact and decides again.
* ``benchmark``: time the chosen backend against eager fp32 (``--compare``: every candidate that
  passed) at several batch sizes over a set of texts: throughput, p50 / p95 latency per batch,
  speedup against eager, quality.

The selection's options override their ``EMBED_*`` environment variables (``helpers.backends.ENV_VARS``). Exit codes
follow the usual convention: 0 success, 1 the work failed (no candidate passed, a model folder
that cannot be read), 2 a usage or configuration error (the message names the option or variable).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from .backends import BACKENDS, COMPILE_MODES, PRECISIONS
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_mutually_exclusive_group()
    where.add_argument("--model-dir", type=Path, help="a model folder made by helpers.deployment.prepare_context "
                                                      "(default: $MODEL_DIR)")
    where.add_argument("--model", help="a model name for helpers.load_encoder (its folder is written to the cache)")
    common.add_argument("--backend", choices=["auto", *BACKENDS], help="auto (measure and choose) or one backend")
    common.add_argument("--candidates", help="comma-separated backends auto chooses from (default: all)")
    common.add_argument("--precision", choices=PRECISIONS, help="the lowest precision allowed besides fp32")
    common.add_argument("--compile-mode", choices=COMPILE_MODES)
    common.add_argument("--device", choices=["cpu", "cuda"])
    common.add_argument("--threads", type=int, help="CPU threads for every backend (default: torch's)")
    common.add_argument("--batch-size", type=int, help="texts per request at the serving shape (default 8)")
    common.add_argument("--seq-len", type=int, help="tokens per text at the serving shape (default 128)")
    common.add_argument("--runs", type=int, help="timed calls per candidate (default 20)")
    common.add_argument("--warmup", type=int, help="untimed calls per candidate first (default 3)")
    common.add_argument("--pairs", type=int, help="Q&A pairs for the quality check (default: all)")
    common.add_argument("--cache-dir", type=Path, help="artifact cache (default: $EMBED_CACHE_DIR or ~/.cache/...)")
    common.add_argument("--force", action="store_true", help="ignore the cache: rebuild every artifact, decide again")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(prog="python -m helpers.backend_cli", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("optimize", parents=[common], help="choose a backend by measurement and cache it")
    bench = sub.add_parser("benchmark", parents=[common], help="time backends at several batch sizes")
    bench.add_argument("--compare", action="store_true", help="every candidate that passed, not only the chosen one")
    bench.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    bench.add_argument("--num-texts", type=int, default=64, help="texts from the Q&A set to cycle through (default 64)")
    return parser


def _env_from_args(args) -> dict:
    env = dict(os.environ)
    for option, var in (("backend", "EMBED_BACKEND"), ("candidates", "EMBED_CANDIDATES"), ("precision", "EMBED_PRECISION"),
                        ("compile_mode", "EMBED_COMPILE_MODE"), ("device", "EMBED_DEVICE"), ("runs", "EMBED_RUNS"),
                        ("warmup", "EMBED_WARMUP"), ("batch_size", "EMBED_BATCH_SIZE"), ("seq_len", "EMBED_SEQ_LEN")):
        value = getattr(args, option)
        if value is not None:
            env[var] = str(value)
    if args.pairs is not None:
        env["EMBED_QUALITY_PAIRS"] = str(args.pairs)
    return env


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise ValueError(f"--{name} must be 1 or more, got {value}")


def _model_dir(args, cache_dir: Path) -> Path:
    if args.model:
        import re

        import helpers
        from .deployment import prepare_context, serving_dir
        dest = cache_dir / "models" / re.sub(r"[^A-Za-z0-9._-]+", "_", args.model)
        if not (dest / "model" / "serving.json").is_file():
            prepare_context(serving_dir(), dest, helpers.load_encoder(args.model, verbose=False), onnx=False)
        return dest / "model"
    folder = args.model_dir or (Path(os.environ["MODEL_DIR"]) if os.environ.get("MODEL_DIR") else None)
    if folder is None:
        raise ValueError("no model: give --model-dir DIR (a folder made by helpers.deployment.prepare_context, "
                         "or set MODEL_DIR) or --model NAME")
    return folder


def benchmark_table(runners: dict, files, texts: list[str], batch_sizes: list[int], *, runs: int, warmup: int,
                    threads: int, device: str, quality: dict, progress: bool = True):
    """Per backend and batch size: texts/s, p50 / p95 latency of a batch, speedup against eager fp32."""
    import numpy as np
    import pandas as pd

    from .backends import REFERENCE
    from .timing import compare
    rows = []
    for size in batch_sizes:
        batches = [files.batch(texts[i:i + size]) for i in range(0, len(texts), size)]
        batches = [b for b in batches if b[0].shape[0] == size] or batches[:1]

        def cycling(run, batches=batches):
            state = {"i": 0}

            def call():
                ids, mask = batches[state["i"] % len(batches)]
                state["i"] += 1
                return run(ids, mask)
            return call

        count = max(int(runs), len(batches))
        timings = compare({name: cycling(run) for name, run in runners.items()}, runs=count, warmup=warmup,
                          threads=threads, device=device, progress=progress)
        base = timings[REFERENCE].median
        for name, timing in timings.items():
            times = np.asarray(timing.times)
            rows.append({"backend": name, "batch": size, "texts/s": size * len(times) / times.sum(),
                         "p50 (ms)": 1e3 * float(np.percentile(times, 50)), "p95 (ms)": 1e3 * float(np.percentile(times, 95)),
                         "speedup vs eager": base / timing.median, **quality.get(name, {})})
    return pd.DataFrame(rows).set_index(["backend", "batch"])


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from . import backends
    from .artifacts import ArtifactCache, default_cache_dir
    try:
        for name in ("threads", "batch_size", "seq_len", "runs", "pairs", "num_texts"):
            _positive(name.replace("_", "-"), getattr(args, name, None))
        import torch
        threads = args.threads or torch.get_num_threads()
        settings = backends.settings_from_env(_env_from_args(args), threads=threads)
        if not (args.model or args.model_dir or os.environ.get("MODEL_DIR")):
            raise ValueError("no model: give --model-dir DIR (a folder made by helpers.deployment.prepare_context, "
                             "or set MODEL_DIR) or --model NAME")
        sizes = [int(s) for s in args.batch_sizes.split(",")] if args.command == "benchmark" else []
        if any(s < 1 for s in sizes):
            raise ValueError(f"--batch-sizes must be whole numbers of 1 or more, got {args.batch_sizes!r}")
    except (backends.ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        import pandas as pd
        folder = _model_dir(args, cache_dir)
        torch.set_num_threads(settings.threads)
        if args.command == "optimize":
            served = backends.serve(folder, settings, cache_dir=cache_dir, force=args.force, progress=not args.quiet)
            report = served.report
            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
                print(backends.candidate_table(report).drop(columns=["reason"]).round(4).to_string())
                print("\nwhy each candidate was not chosen:")
                for name, reason in report["rejected"].items():
                    print(f"  {name}: {reason}")
            s = report["speedup"]
            print(f"\nchosen: {report['candidate']} ({report['source']}, start {report['start_s']:.1f} s): "
                  f"{s['median']:.2f}x eager fp32 (quartile range {s['low']:.2f}-{s['high']:.2f}x) at "
                  f"{report['shape'][0]} x {report['shape'][1]} tokens, {settings.threads} threads, "
                  f"on {report['device']} [{report['environment']['cpu_features']}]")
            return EXIT_OK
        files = backends.ModelFiles.read(folder)
        cache = ArtifactCache(cache_dir)
        runners: dict = {}
        if args.compare:
            report = backends.select(files, settings, cache, force=args.force, progress=not args.quiet, runners_out=runners)
        else:
            served = backends.serve(folder, settings, cache_dir=cache_dir, force=args.force, progress=not args.quiet)
            report = served.report
            runners = {report["candidate"]: served.run, backends.REFERENCE: backends.torch_runner(
                files.torch_model(settings.device), settings.device)}
        quality = {row["candidate"]: {"cosine mean": row.get("cosine mean"), "recall@1 vs eager": row.get("recall@1 vs reference")}
                   for row in report["candidates"]}
        from .quality import load_qa_pairs
        pairs = load_qa_pairs()
        texts = [t for p in pairs for t in (p.question, p.answer)][:args.num_texts]
        table = benchmark_table(runners, files, texts, sizes, runs=settings.runs, warmup=settings.warmup,
                                threads=settings.threads, device=settings.device, quality=quality, progress=not args.quiet)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.round(3).to_string())
        print(f"\n{len(texts)} texts, {settings.threads} threads, {report['device']} "
              f"[{report['environment']['cpu_features']}]; chosen at {report['shape'][0]} x {report['shape'][1]}: "
              f"{report['candidate']}")
        for name, reason in report["rejected"].items():
            if not reason.startswith("slower"):
                print(f"  not benchmarked: {name}: {reason}")
        return EXIT_OK
    except (backends.ConfigError, FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
