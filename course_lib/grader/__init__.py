"""Grading a class: one sandbox per submission, verdicts outside the student's process.

``checker`` grades one submitted notebook: the student's cells run in a bubblewrap sandbox
(``sandbox``, ``agent``), each test cell runs in the checker's own process, which asks the
student's process for values and calls across a data-only channel (``wire``, ``remote``).
``classroom`` hands a class's submissions to workers (processes, or a Dask cluster) and alone
writes nbgrader's gradebook.
"""
