"""The kernel nbgrader runs every lab in: this interpreter, whatever else Jupyter can find.

nbgrader starts each notebook's kernel by name. ``python3`` is whichever kernelspec of that
name Jupyter finds first on its search path: a user's own (``~/.local/share/jupyter``), a
system one, or this environment's. When it is not this environment's Python, torch is missing
and every cell of every submission fails at grading. :func:`register_course_kernel` writes a
kernelspec with its own name that runs ``sys.executable`` (the Python running nbgrader, i.e.
the course environment) and puts it first on ``JUPYTER_PATH`` for this process and the
processes it starts; ``nbgrader_config.py`` makes nbgrader use it. No file in the course or
the user's home changes: the spec lives in the temp folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

COURSE_KERNEL = "inference-course"


def course_kernel_spec() -> dict:
    """The kernel.json of the course kernel: this interpreter running ipykernel."""
    return {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (inference course)", "language": "python",
            "metadata": {"debugger": True}}


def register_course_kernel() -> str:
    """Make the course kernel findable first by Jupyter in this process and its children; return its name."""
    tag = hashlib.sha1(sys.executable.encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"inference-course-jupyter-{tag}"
    spec = root / "kernels" / COURSE_KERNEL / "kernel.json"
    wanted = course_kernel_spec()
    try:
        current = json.loads(spec.read_text(encoding="utf-8")) if spec.is_file() else None
    except (OSError, json.JSONDecodeError):
        current = None
    if current != wanted:
        spec.parent.mkdir(parents=True, exist_ok=True)
        partial = spec.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(wanted, indent=1), encoding="utf-8")
        partial.replace(spec)  # atomic: two graders starting at once never read half a file
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(root) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root), *paths])
    return COURSE_KERNEL
