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

# Checks that a submission cannot switch off from inside the kernel (course_lib/autograde.py):
# TamperScan records suspicious code in answer cells; CourseExecute zeroes a test cell that did not
# run to its end even if an exception was hidden, times every cell, names timeouts, and keeps a
# passing test cell's stderr (a debug print or a library warning) instead of zeroing the cell.
# `make grade` prints the report (course-lib grade-report).
try:
    from course_lib.autograde import CourseExecute, TamperScan
except ImportError:  # nbgrader run outside the course's environment: plain nbgrader
    pass
else:
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades

    c.Autograde.autograde_preprocessors = [
        TamperScan, CourseExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
        SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
    ]

# While grading, nbgrader sets NBGRADER_EXECUTION=autograde in the kernel. course_lib reads
# it on import: progress bars are off and warnings are silenced, because a test cell that
# writes anything to stderr scores zero even when its asserts pass.

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
