"""Capturing a model as a program (lab 11): TorchScript, ``torch.export``, AOTInductor, and what each costs to load.

A captured program is a file a server can load without the model's Python code: a TorchScript
archive (``torch.jit.trace`` / ``torch.jit.script``, deprecated), an ``ExportedProgram``
(``torch.export.export`` then ``torch.export.save``), or an AOTInductor package
(``torch._inductor.aoti_compile_and_package``: the exported graph compiled to a shared library,
loaded with ``aoti_load_package``).  The lab builds them step by step; this module holds the
plumbing around them:

* :func:`recorded_warnings` and :func:`tracer_warnings`: the warnings a trace printed, kept and
  summarised (one line per place in the code, with a count) instead of a wall of red text;
* :func:`short_error`: the first line of an exception, which is where torch puts the reason;
* :func:`load_in_new_process`: load a saved program in a **new** Python process and answer one
  request twice, timing each stage (a load measured in the notebook, where torch and the model's
  code are imported already, measures nothing); its stage dicts fit ``helpers.cold_start``'s
  ``stage_table``, ``totals`` and ``plot_stages``;
* :func:`size_mib`: what a program weighs on disk (a file, or a folder such as ``save_pretrained``'s).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

# How each kind of saved program is loaded in a fresh process: (its import stage's name, that import, the load).
KINDS = {
    "eager (from_pretrained)": ("import transformers", "from transformers import AutoModel",
                                "_inner = AutoModel.from_pretrained(_path).eval()\n"
                                "def model(ids, mask):\n"
                                "    hidden = _inner(input_ids=ids, attention_mask=mask).last_hidden_state\n"
                                "    m = mask.unsqueeze(-1).to(hidden.dtype)\n"
                                "    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)\n"
                                "    return torch.nn.functional.normalize(pooled, p=2, dim=1)\n"),
    "TorchScript": ("", "", "model = torch.jit.load(_path)\n"),
    "torch.export": ("", "", "model = torch.export.load(_path).module()\n"),
    "AOTInductor": ("import torch._inductor", "import torch._inductor", "model = torch._inductor.aoti_load_package(_path)\n"),
}
SPAWNED_ENV = "COURSE_SPAWNED_AT"

# The child: interpreter start (from the parent's time stamp), each import, the load, two requests.
# It prints one JSON line; the first request's answer goes to a file the parent compares.
_LOAD_PROGRAM = r'''
import time
_t0 = time.time()
import json, os, sys
stages = {"interpreter start": _t0 - float(os.environ["COURSE_SPAWNED_AT"])}
import_stage, kind_import, load_code, _path, inputs_file, out_file, threads = json.loads(sys.argv[1])
t = time.perf_counter()
import torch
torch.set_num_threads(int(threads))
stages["import torch"] = time.perf_counter() - t
if kind_import:
    t = time.perf_counter()
    exec(kind_import)
    stages[import_stage] = time.perf_counter() - t
t = time.perf_counter()
exec(load_code)
stages["load"] = time.perf_counter() - t
ids, mask = torch.load(inputs_file)
for name in ("first request", "second request"):
    t = time.perf_counter()
    with torch.inference_mode():
        out = model(ids, mask)
    stages[name] = time.perf_counter() - t
    if name == "first request":
        torch.save(out.detach().cpu(), out_file)
print("@load " + json.dumps(stages), flush=True)
'''


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list]:
    """Record every warning raised in the block (none is printed); yields the list, filled as they come."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def tracer_warnings(caught: Sequence, *, limit: int = 6) -> list[str]:
    """The ``torch.jit.TracerWarning``\\ s among ``caught``, one line per place in the code with its count.

    A TracerWarning says that tracing turned a value it cannot record (a tensor read as a Python
    bool or int, a shape used by Python) into a constant; the deprecation warnings of
    ``torch.jit.trace`` itself are left out.  ``limit`` caps the lines (the rest are counted).
    """
    import torch
    places: Counter = Counter()
    for w in caught:
        if issubclass(w.category, torch.jit.TracerWarning):
            message = str(w.message).split(". ")[0].strip()
            places[(f"{_short_path(w.filename)}:{w.lineno}", message)] += 1
    lines = [f"{where}: {message}" + (f" ({n} times)" if n > 1 else "") for (where, message), n in places.items()]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more place(s)"]
    return lines


def _short_path(filename: str) -> str:
    marker = "site-packages" + os.sep
    return filename.split(marker, 1)[1] if marker in filename else Path(filename).name


def short_error(exc: BaseException, width: int = 300) -> str:
    """``Type: first non-empty line of the message`` (torch puts the reason there), cut to ``width``."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "(no message)")
    return f"{type(exc).__name__}: {first}"[:width]


def size_mib(path: str | os.PathLike) -> float:
    """Size on disk in MiB: a file, or every file under a folder."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size / 2**20
    if not root.is_dir():
        raise FileNotFoundError(f"nothing at {root}: save the program first")
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20


def load_in_new_process(kind: str, path: str | os.PathLike, inputs: tuple, *, threads: int,
                        timeout_s: float = 300) -> tuple[dict[str, float], "torch.Tensor"]:  # noqa: F821
    """Load the program saved at ``path`` in a new Python process and answer ``inputs`` twice.

    ``kind`` is one of :data:`KINDS` (``"eager (from_pretrained)"`` takes a ``save_pretrained``
    folder and pools its output the course's way). Returns ``({stage: seconds}, first answer)``:
    ``interpreter start`` (spawn to the child's first statement), ``import torch``, the kind's own
    import if any, ``load``, ``first request``, ``second request``. Raises ``ValueError`` for an
    unknown kind and ``RuntimeError`` with the child's last error line if the load or a request fails.
    """
    import torch
    if kind not in KINDS:
        raise ValueError(f"unknown kind of program {kind!r}: use one of {list(KINDS)}")
    if not Path(path).exists():
        raise FileNotFoundError(f"no saved program at {path}: save it first")
    import_stage, kind_import, load_code = KINDS[kind]
    with tempfile.TemporaryDirectory(prefix="lab11-load-") as scratch:
        inputs_file, out_file = Path(scratch) / "inputs.pt", Path(scratch) / "answer.pt"
        torch.save(tuple(t.detach().cpu() for t in inputs), inputs_file)
        spec = [import_stage, kind_import, load_code, str(path), str(inputs_file), str(out_file), int(threads)]
        env = dict(os.environ, **{SPAWNED_ENV: repr(time.time())})
        try:
            run = subprocess.run([sys.executable, "-c", _LOAD_PROGRAM, json.dumps(spec)], env=env,
                                 capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"loading the {kind} program did not finish within {timeout_s:.0f} s") from None
        lines = [line for line in run.stdout.splitlines() if line.startswith("@load ")]
        if run.returncode != 0 or not lines:
            last = (run.stderr.strip().splitlines() or ["no error message"])[-1]
            raise RuntimeError(f"loading the {kind} program in a new process failed: {last}")
        return json.loads(lines[-1][len("@load "):]), torch.load(out_file)
