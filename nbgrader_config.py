"""nbgrader configuration for the course (nbgrader 0.9, JupyterLab 4 / Notebook 7).

solutions/<lab>/<lab>.ipynb   source: answers, hidden tests, mark schemes (instructors only)
labs/<lab>/<lab>.ipynb        release: what `nbgrader generate_assignment <lab>` makes for students

Autograding runs each submission in the fast `smoke` profile (see helpers/profile.py):
the LAB_PROFILE environment variable is set to `smoke` for nbgrader's own commands unless
you set it yourself.
"""

import os
import sys

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file

c.CourseDirectory.course_id = "inference-optimization"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "labs"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# Data files next to a notebook travel with it; never checkpoints or caches.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*"]

c.ClearSolutions.enforce_metadata = True

# How nbgrader runs a notebook, the same here and in the students' bundle (helpers.grading):
# - one kernel for everyone: the Python that runs nbgrader (the course's virtual environment), under
#   a name of its own, so a user's or the system's `python3` kernelspec cannot stand in for it;
# - 120 s per cell, then the kernel is interrupted and the cell scored as an error (the slowest
#   smoke-profile cell takes seconds on 2 cores; the limit still stops an infinite loop);
# - every kernel nbgrader starts runs the smoke profile unless LAB_PROFILE was set, however nbgrader
#   was started: a command, or JupyterLab's Validate button and the Formgrader (whose sys.argv is
#   `jupyter-lab`). Students' own kernels are not touched.
from helpers.grading import configure_nbgrader_execution  # noqa: E402

configure_nbgrader_execution(c)

# A student who deletes a test cell gets it back (and the grade it carries), instead of
# silently losing those points or, worse, escaping them.
c.OverwriteCells.add_missing_cells = True
# Each lab's papermill `parameters` cell is a read-only nbgrader cell: autograding restores its
# released source (OverwriteCells), so a submission that set LAB_PROFILE = "full" or N_RUNS = 1000
# is still graded in the smoke profile. Students may still edit it to run their own copy in another
# profile, so read-only cells stay editable in the release (the cell's own metadata makes it
# undeletable; helpers.submissions.repair puts back a deleted one in the batch route).
c.LockCells.lock_readonly_cells = False

# Autograde and validate in the smoke profile unless the instructor chose otherwise (also for
# what nbgrader's own command starts outside a kernel).
if any(cmd in sys.argv[1:2] for cmd in ("autograde", "validate", "generate_feedback")):
    os.environ.setdefault("LAB_PROFILE", "smoke")

# Feedback shows each test's result, not the hidden tests' code, their tracebacks or a mark scheme
# (nbgrader shows them by default: jupyter/nbgrader#917). See helpers/feedback.py.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from helpers.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
