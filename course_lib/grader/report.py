"""The grading report: per submission, its score, each test cell's time, timeouts, a process that
ended early and the tampering flags (``course-lib grade-report``; ``course-lib grade`` prints it)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat

from .cells import META, is_test_cell, nbgrader_meta


def notebook_summary(nb) -> dict:
    """Per test cell: points, passed, seconds, timeout, hidden error; timeouts anywhere; tamper flags."""
    cells, timeouts = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.metadata.get(META, {}).get("timeout"):
            timeouts.append(nbgrader_meta(cell).get("grade_id") or f"cell {i}")
        if not is_test_cell(cell):
            continue
        m = cell.metadata.get(META, {})
        errors = [o for o in cell.outputs if o.output_type == "error"]
        cells.append({
            "grade_id": nbgrader_meta(cell).get("grade_id"),
            "points": float(nbgrader_meta(cell).get("points", 0)),
            "passed": not errors and not any(o.output_type == "stream" and o.name == "stderr" for o in cell.outputs),
            "seconds": m.get("seconds"),
            "timeout": bool(m.get("timeout")),
            "error": (errors[0].get("ename", "") + ": " + str(errors[0].get("evalue", ""))[:120]) if errors else "",
        })
    iso = nb.metadata.get(META, {}).get("isolated", {})
    return {"cells": cells, "timeouts": timeouts, "tamper": nb.metadata.get(META, {}).get("tamper", []),
            "ended": iso.get("dead"), "sandbox": iso.get("sandbox")}


def grade_report(root: str | Path = ".", *, out=print) -> list[dict]:
    """Print, per autograded submission, its score, timeouts, hidden errors and tampering flags."""
    from nbgrader.api import Gradebook

    root = Path(root).resolve()
    rows = []
    db = root / "gradebook.db"
    if not db.is_file():
        raise FileNotFoundError(f"no gradebook at {db}: run `make grade` (nbgrader autograde) first")
    with Gradebook(f"sqlite:///{db}") as gb:
        for assignment in sorted(a.name for a in gb.assignments):
            for sub in sorted(gb.assignment_submissions(assignment), key=lambda s: s.student.id):
                student = sub.student.id
                row = {"assignment": assignment, "student": student, "score": sub.code_score,
                       "max_score": sub.max_code_score, "manual_max": sub.max_written_score,
                       "cells": [], "timeouts": [], "tamper": [], "ended": [], "unsandboxed": False}
                for path in sorted((root / "autograded" / student / assignment).glob("*.ipynb")):
                    s = notebook_summary(nbformat.read(str(path), as_version=4))
                    row["cells"] += s["cells"]
                    row["timeouts"] += s["timeouts"]
                    row["tamper"] += s["tamper"]
                    if s["ended"]:
                        row["ended"].append(f"{path.name}: {s['ended']}")
                    row["unsandboxed"] |= s["sandbox"] is False
                rows.append(row)
    for row in rows:
        out(f"{row['assignment']:22s} {row['student']:16s} auto {row['score']:g}/{row['max_score']:g}"
            + (f" (+{row['manual_max']:g} graded by hand)" if row["manual_max"] else ""))
        for c in row["cells"]:
            note = "TIMEOUT" if c["timeout"] else ("ok" if c["passed"] else c["error"])
            out(f"    {c['grade_id']:32s} {c['points']:4g} pts {c['seconds'] if c['seconds'] is not None else '?':>7} s  {note}")
        timed = [c for c in row["cells"] if c["seconds"] is not None]
        if timed:
            slow = sorted(timed, key=lambda c: -c["seconds"])[:3]
            out("    slowest: " + ", ".join(f"{c['grade_id']} {c['seconds']:g} s" for c in slow))
        for e in row["ended"]:
            out("    ! the student's process ended early (cells after it scored zero): " + e)
        if row["unsandboxed"]:
            out("    ! graded WITHOUT a sandbox (--unsafe)")
        if row["timeouts"]:
            out("    ! TIMEOUT (stopped at the time limit, then the rest was graded): " + ", ".join(row["timeouts"]))
        if row["tamper"]:
            out("    ! TAMPERING suspected, check by hand:")
            for f in row["tamper"]:
                out(f"        {f['cell']}, line {f['line']}: {f['what']}")
    (root / "grading-report.json").write_text(json.dumps(rows, indent=1))
    return rows
