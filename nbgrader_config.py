"""nbgrader settings for the course (instructors). Run nbgrader from the repository root."""
import os

c = get_config()  # noqa: F821  (provided by nbgrader)

c.CourseDirectory.course_id = "interpretability"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(c.CourseDirectory.root, "gradebook.db")

# Each cell may run this long before it is interrupted and marked as an error (reported as a
# timeout by `course-lib grade-report`); the rest of the notebook is still graded. Every graded cell
# of the reference solutions takes under a fifth of this on a quiet 2-core machine, and the tests
# autograde them with the CPU shared 2x; 180 s leaves room for a busy hub without letting an
# infinite loop stall a whole class for long.
c.Execute.timeout = 180
c.Execute.interrupt_on_timeout = True

# Each submission is graded in isolation (course_lib/grader/, `course-lib grade` = `make grade`): the
# student's cells run in a bubblewrap sandbox (a private copy of the release, the environment read-only,
# no solutions/, gradebook or network, the limits below, its own PID namespace); every test cell runs in
# a separate checker process that never runs student code and asks the student's process for values and
# calls. IsolatedExecute puts those results into nbgrader's autograde (executing here when there are
# none yet); TamperScan still records suspicious code in answer cells for the report.
c.CourseGrader.memory_bytes = 4 * 1024**3   # per submission's sandbox (cgroup memory limit)
c.CourseGrader.max_processes = 256          # per submission's sandbox (cgroup pids limit)
c.CourseGrader.threads = 1                  # torch threads in each sandbox; make grade runs CPU budget / threads at once

# Without course_lib importable, nbgrader would execute student code in its own kernel: refuse instead.
from course_lib.autograde import IsolatedExecute, RestoreRoles, TamperScan  # noqa: E402
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds, IgnorePattern, LimitOutput,
    OverwriteCells, OverwriteKernelspec, SaveAutoGrades,
)

# A submission's metadata cannot make a cell a test, an answer or read-only: the roles are the instructor's
# (RestoreRoles, before nbgrader's own sanitizing; the checker applies the same rule).
c.Autograde.sanitize_preprocessors = [
    ClearOutput, RestoreRoles, DeduplicateIds, OverwriteKernelspec, OverwriteCells, CheckCellMetadata,
]

c.Autograde.autograde_preprocessors = [
    TamperScan, IsolatedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
    SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
]

# While grading, nbgrader sets NBGRADER_EXECUTION=autograde in the kernel. course_lib reads
# it on import: progress bars are off and warnings are silenced, because a test cell that
# writes anything to stderr scores zero even when its asserts pass.

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
