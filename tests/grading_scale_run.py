"""How the batch grader scales: N synthetic submissions of the two-second stand-in lab, by worker count.

    uv run python tests/grading_scale_run.py [--n 200] [--workers 1 2] [--baseline OLD_CHECKOUT]

A measurement, not a test (it takes tens of minutes; the README quotes its output). For each
worker count it grades the same N correct submissions of ``tests/fixture_course``'s ``fx01_speedups``
with the documented command (``python -m helpers.batch_grading ... --jobs W``: a Dask local cluster
of W workers) into a fresh output folder, and reports wall time and throughput. ``--baseline``
times the same command from another checkout of the course (the grader before Dask: a thread pool
of ``--jobs`` processes), interleaved with this one's runs. It ends with a projection of a class of
300 students x 12 labs on 8, 32 and 128 one-core workers, from the per-submission cost of the real
labs (``--per-submission``, seconds: the README's cost table) and the parallel efficiency measured here.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))


def _box() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    kind = "AVX-512 box" if re.search(r"\bavx512f\b", flags) else "AVX2-only box" if " avx2 " in flags else "other CPU"
    return f"{kind}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


def _course(work: Path) -> Path:
    course = work / "course"
    shutil.copytree(REPO / "tests" / "fixture_course" / "solutions", course / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", course / "nbgrader_config.py")
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "fx01_speedups", "--force", "--no-db"],
                   cwd=course, env=env, check=True, capture_output=True)
    return course


def _submissions(work: Path, course: Path, n: int) -> Path:
    from bad_submissions import correct_submission
    nb = json.dumps(correct_submission("fx01_speedups", course))
    root = work / "collected"
    for i in range(n):
        (root / f"s{i:04d}").mkdir(parents=True)
        (root / f"s{i:04d}" / "fx01_speedups.ipynb").write_text(nb, encoding="utf-8")
    return root


def _grade(checkout: Path, root: Path, course: Path, out: Path, workers: int) -> float:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(checkout))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "helpers.batch_grading", str(root), "--course", str(course),
                          "--out", str(out), "--jobs", str(workers), "--cell-timeout", "60"],
                         cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    graded = run.stdout.count(": 2.0/2.0")
    if run.returncode != 0 or graded != len(list(root.iterdir())):
        raise SystemExit(f"{checkout} --jobs {workers}: exit {run.returncode}, {graded} graded\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout of the course to time too")
    parser.add_argument("--per-submission", type=float, default=None,
                        help="mean seconds one worker spends on a real lab's submission, for the projection")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="grading-scale-") as tmp:
        work = Path(tmp)
        course = _course(work)
        root = _submissions(work, course, args.n)
        engines = [("Dask (this checkout)", REPO)] + ([("thread pool (baseline)", args.baseline.resolve())]
                                                      if args.baseline else [])
        for workers in args.workers:
            for name, checkout in engines:  # interleaved: the engines share the machine's slow spells alike
                out = work / f"out-{len(results)}"
                seconds = _grade(checkout, root, course, out, workers)
                results.append({"engine": name, "workers": workers, "n": args.n, "seconds": round(seconds, 1),
                                "per_minute": round(60 * args.n / seconds, 1)})
                print(f"{name}, {workers} worker(s): {seconds:.0f} s, {60 * args.n / seconds:.1f} submissions/min",
                      flush=True)
                shutil.rmtree(out)
    print(f"\n{args.n} submissions of the stand-in lab, {_box()}, {datetime.now(timezone.utc):%Y-%m-%d}\n")
    print("| engine | workers | wall time | submissions per minute | per submission, one worker's time |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['engine']} | {r['workers']} | {r['seconds']:.0f} s | {r['per_minute']:.1f} | "
              f"{r['seconds'] * r['workers'] / r['n']:.2f} s |")
    for name, _ in engines:
        mine = {r["workers"]: r for r in results if r["engine"] == name}
        if 1 in mine and 2 in mine:
            ratio = mine[2]["per_minute"] / mine[1]["per_minute"]
            print(f"\n{name}: 2 workers / 1 worker = {ratio:.2f}x the throughput")
            if name.startswith("Dask") and args.per_submission:
                # One core per worker; no gain above 1 per worker is assumed, whatever this box showed
                # (a single worker leaves the second core mostly idle: Python starts, kernel starts).
                efficiency = min(1.0, ratio / 2)
                total = 300 * 12 * args.per_submission
                print(f"Projection, 300 students x 12 labs at {args.per_submission:.1f} s per submission "
                      f"({total / 3600:.1f} worker-hours), {efficiency:.0%} efficiency:")
                for w in (8, 32, 128):
                    print(f"  {w} workers: {total / w / efficiency / 60:.0f} min")
    if args.json:
        args.json.write_text(json.dumps({"box": _box(), "results": results}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
