"""Export what students get, and nothing else, as one zip file.

    uv run python -m helpers.student_bundle --course-repo URL [--out dist/student-bundle.zip]

In the bundle: the released labs (``labs/``), the ``helpers`` package and its data (without
the instructor's grading tools), the environment files (``pyproject.toml``, ``uv.lock``,
``environment.yml``), the students' README (``labs/README.md``, also as the top-level
``README.md``: the instructor's README is not shipped), the students' ``nbgrader_config.py``
(:data:`STUDENT_CONFIG`: Validate in the smoke profile), ``LICENSE`` and the figures in ``images/``.  Never in it: ``solutions/`` (answers, hidden tests, mark schemes), ``tests/``,
the nbgrader configuration and gradebook, and anything students handed in.
:func:`check_bundle` proves it: no solution or hidden-test marker and no line of a solution
region anywhere inside.

``--course-repo`` is the public repository students install from on Colab (the labs' first
cell runs ``pip install git+<it>``): a repository made from this bundle, never the instructor's
own. It is written into every lab of the bundle, so it is set once, here; the command refuses
the placeholder and this folder's own ``origin``. ``--no-colab`` leaves the placeholder (a
class that does not use Colab).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

TOP_FILES = ("LICENSE", "pyproject.toml", "uv.lock", "environment.yml")
STUDENT_README = Path("labs") / "README.md"  # shipped as labs/README.md and as the bundle's README.md
PLACEHOLDER = "https://github.com/REPLACE-WITH-YOUR-COURSE-REPOSITORY"
# The students' nbgrader_config.py (the instructors' one, with the course's layout and grading
# plug-ins, is never shipped). Without it, JupyterLab's Validate button would run a lab in the
# full profile with nbgrader's 30 s per-cell default, and a correct lab could fail on time alone.
STUDENT_CONFIG = '''"""nbgrader settings for students: JupyterLab's Validate button checks a lab the way grading does.

Start JupyterLab from this folder (`uv run jupyter lab`) so nbgrader finds this file. Validate then
runs the notebook in the smoke profile (seconds, where the full profile takes minutes), in the
course's environment, with grading's time limit per cell.
"""

from helpers.grading import configure_nbgrader_execution

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file
configure_nbgrader_execution(c)  # the same as the instructors' grading runs
'''
TOP_FOLDERS = ("labs", "helpers", "images")
# Instructor tools inside the helpers package: not needed to work a lab.
INSTRUCTOR_MODULES = ("batch_grading.py", "grading_cluster.py", "grade_runner.py", "submissions.py", "feedback.py",
                      "manual_marks.py", "student_bundle.py")
SKIP_PARTS = ("__pycache__", ".ipynb_checkpoints")
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "Model answer (for graders")


def bundle_files(course: Path) -> list[Path]:
    """The files (relative to ``course``) that go to students, sorted."""
    course = Path(course)
    files = [Path(name) for name in TOP_FILES if (course / name).is_file()]
    for folder in TOP_FOLDERS:
        for path in sorted((course / folder).rglob("*")):
            rel = path.relative_to(course)
            if not path.is_file() or any(part in SKIP_PARTS or part.startswith(".") for part in rel.parts):
                continue
            if rel.parts[0] == "helpers" and rel.name in INSTRUCTOR_MODULES:
                continue
            files.append(rel)
    return sorted(files)


def _regions(course: Path) -> tuple[set[str], list[str]]:
    """(lines found only inside solution/hidden-test regions, each region as a block of stripped lines)."""
    inside, outside, blocks = set(), set(), []
    for nb_path in sorted((Path(course) / "solutions").glob("*/*.ipynb")):
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            current = None
            for line in text.splitlines():
                if "BEGIN SOLUTION" in line or "BEGIN HIDDEN TESTS" in line:
                    current = []
                elif "END SOLUTION" in line or "END HIDDEN TESTS" in line:
                    if current and len(current) >= 2:
                        blocks.append("\n".join(current))
                    current = None
                elif line.strip():
                    (outside if current is None else inside).add(line.strip())
                    if current is not None:
                        current.append(line.strip())
    secret = {line for line in inside - outside if len(line) > 8}
    return secret, blocks


def _plain_lines(name: str, data: bytes) -> list[str]:
    """The text lines of a file; for a notebook, the lines of its cells' sources."""
    text = data.decode("utf-8")
    if name.endswith(".ipynb"):
        cells = json.loads(text).get("cells", [])
        text = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_bundle(zip_path: Path, course: Path) -> list[str]:
    """Problems found in a bundle (empty when it is safe to hand out).

    A file leaks if it holds a solution/hidden-test marker, a whole solution region, or (for
    a lab notebook) any line that occurs in the instructor notebooks only inside such regions.
    """
    problems = []
    secret, blocks = _regions(course)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        for name in names:
            top = name.split("/", 1)[0]
            if name == "nbgrader_config.py" and archive.read(name).decode("utf-8", "replace") == STUDENT_CONFIG:
                continue  # the students' own settings (Validate in the smoke profile), not the instructors'
            if top in ("solutions", "tests", ".ci") or name.endswith(("nbgrader_config.py", "gradebook.db")):
                problems.append(f"{name}: instructor-only file")
                continue
            data = archive.read(name)
            try:
                lines = _plain_lines(name, data)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # images and other binary files
            text = "\n".join(lines)
            problems += [f"{name}: contains {marker!r}" for marker in MARKERS if marker in text]
            whole = [block for block in blocks if block in text]
            if whole:
                problems.append(f"{name}: contains a whole solution region, starting {whole[0].splitlines()[0]!r}")
            if top == "labs":
                leaked = sorted(set(lines) & secret)
                if leaked:
                    problems.append(f"{name}: contains solution lines, e.g. {leaked[0]!r}")
        if not any(n.startswith("labs/") and n.endswith(".ipynb") for n in names):
            problems.append("no lab notebooks in the bundle")
    return problems


def _normalised(url: str) -> str:
    """A repository URL without ``git+``, ``.git``, a trailing ``@<tag>`` or case, to compare two."""
    url = url.strip().lower().removeprefix("git+").replace("git@github.com:", "https://github.com/")
    head, _, last = url.rstrip("/").rpartition("/")
    return re.sub(r"\.git$", "", f"{head}/{last.split('@', 1)[0]}")


def check_course_repo(url: str, course: Path) -> str:
    """``url`` if students can install from it; else ValueError saying why."""
    if PLACEHOLDER in url or "REPLACE-WITH" in url:
        raise ValueError("--course-repo is still the placeholder: give the URL of the public repository "
                         "made from this bundle")
    if not re.fullmatch(r"https://[^\s\"'{}]+", url):
        raise ValueError(f"--course-repo must be an https:// URL without spaces or quotes, got {url!r}")
    origin = subprocess.run(["git", "-C", str(course), "remote", "get-url", "origin"], capture_output=True,
                            text=True).stdout.strip()
    if origin and _normalised(origin) == _normalised(url):
        raise ValueError(f"--course-repo {url} is this folder's own origin, which holds the solutions: "
                         "publish the bundle as a separate repository and give its URL")
    return url


def build_bundle(course: Path, out: Path, course_repo: str | None = None) -> Path:
    """Write the zip (with ``course_repo`` in every lab's install cell, when given); refuse (and
    delete it) if :func:`check_bundle` finds anything."""
    course, out = Path(course).resolve(), Path(out)
    if course_repo is not None:
        check_course_repo(course_repo, course)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in bundle_files(course):
            if rel.suffix == ".ipynb" and rel.parts[0] == "labs" and course_repo is not None:
                archive.writestr(rel.as_posix(), (course / rel).read_text(encoding="utf-8").replace(PLACEHOLDER, course_repo))
            else:
                archive.write(course / rel, rel.as_posix())
        if (course / STUDENT_README).is_file():
            archive.write(course / STUDENT_README, "README.md")
        archive.writestr("nbgrader_config.py", STUDENT_CONFIG)
    problems = check_bundle(out, course)
    if problems:
        out.unlink()
        raise RuntimeError("the student bundle would leak instructor material:\n  " + "\n  ".join(problems))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.student_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=Path.cwd(), help="course folder (default: here)")
    parser.add_argument("--out", type=Path, default=Path("dist/student-bundle.zip"),
                        help="the zip to write (default: dist/student-bundle.zip)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--course-repo", help="https URL of the public student repository made from this bundle "
                                             "(Colab installs from it); may end in @<tag> to pin a release")
    where.add_argument("--no-colab", action="store_true", help="leave the Colab install cell's placeholder")
    args = parser.parse_args(argv)
    if not (args.course / "labs").is_dir():
        parser.error(f"{args.course} has no labs/ folder: pass --course")
    try:
        path = build_bundle(args.course, args.out, None if args.no_colab else args.course_repo)
    except (ValueError, RuntimeError) as exc:
        print(f"student_bundle: error: {exc}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(path) as archive:
        count = len(archive.namelist())
    print(f"wrote {path} ({count} files, {path.stat().st_size / 2**20:.1f} MiB); checked: no solutions, "
          f"hidden tests or mark schemes inside")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
