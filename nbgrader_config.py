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

# One kernel for everyone: the Python that runs nbgrader (the course's virtual environment), under
# a name of its own, so a user's or the system's `python3` kernelspec cannot stand in for it.
from helpers.kernel import register_course_kernel  # noqa: E402

c.Execute.kernel_name = register_course_kernel()
c.ClearSolutions.enforce_metadata = True
# Each cell gets this long before the kernel is interrupted and the cell scored as an error.
# The slowest smoke-profile cell of lab 01 takes a few seconds on 2 cores; 120 s leaves room
# for a slow laptop while still stopping an infinite loop.
from helpers.grading import CELL_TIMEOUT_S, nbgrader_kernel_arguments  # noqa: E402

c.Execute.timeout = CELL_TIMEOUT_S
c.Execute.interrupt_on_timeout = True

# A student who deletes a test cell gets it back (and the grade it carries), instead of
# silently losing those points or, worse, escaping them.
c.OverwriteCells.add_missing_cells = True
# Each lab's papermill `parameters` cell is a read-only nbgrader cell: autograding restores its
# released source (OverwriteCells), so a submission that set LAB_PROFILE = "full" or N_RUNS = 1000
# is still graded in the smoke profile. Students may still edit it to run their own copy in another
# profile, so read-only cells stay editable in the release (the cell's own metadata makes it
# undeletable; helpers.submissions.repair puts back a deleted one in the batch route).
c.LockCells.lock_readonly_cells = False

# Autograde and validate in the smoke profile unless the instructor chose otherwise.
if any(cmd in sys.argv[1:2] for cmd in ("autograde", "validate", "generate_feedback")):
    os.environ.setdefault("LAB_PROFILE", "smoke")
# The same for every kernel nbgrader itself starts, however nbgrader was started: the command line
# above, or JupyterLab's Validate button and the Formgrader (whose sys.argv is `jupyter-lab`). Each
# such kernel runs this line first, so the lab's get_profile() sees "smoke" unless LAB_PROFILE was
# set; students' own kernels are not touched. (The default extra argument is kept.)
c.Execute.extra_arguments = nbgrader_kernel_arguments()

# Feedback shows each test's result, not the hidden tests' code, their tracebacks or a mark scheme
# (nbgrader shows them by default: jupyter/nbgrader#917). See helpers/feedback.py.
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

from helpers.feedback import HideHiddenTests  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
