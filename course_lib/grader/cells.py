"""Which nbgrader cell is which: one definition for the checker, the class runner and the report.

It imports nothing, so the checker (run as a script, without the course_lib package) can load it.
"""
META = "course_lib"  # key of the grader's own metadata in cells and notebooks


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_test_cell(cell) -> bool:
    """An autograded test cell: graded, and not an answer cell."""
    m = nbgrader_meta(cell)
    return cell.get("cell_type") == "code" and bool(m.get("grade")) and not m.get("solution")


def is_answer_cell(cell) -> bool:
    return cell.get("cell_type") == "code" and bool(nbgrader_meta(cell).get("solution"))


def restore_roles(nb, source) -> list[str]:
    """Give every cell of a submission the role the instructor gave it, whatever its metadata says.

    A cell's role (answer, test, read-only, points) comes from ``source``, the instructor's notebook,
    matched by ``grade_id``: the submitted metadata is never trusted, since the checker runs test cells
    in its own process, outside the sandbox. A cell whose id the instructor's notebook lacks, or a second
    copy of an id (nbgrader's DeduplicateIds keeps the last), becomes plain student code. Read-only
    cells (tests and locked cells) get the instructor's source and type. Returns what was changed."""
    by_id = {nbgrader_meta(c).get("grade_id"): c for c in source.cells if nbgrader_meta(c).get("grade_id")}
    seen, notes = set(), []
    for i in range(len(nb.cells) - 1, -1, -1):
        cell = nb.cells[i]
        m = nbgrader_meta(cell)
        if not m:
            continue
        gid = m.get("grade_id")
        ref = by_id.get(gid)
        if ref is None or gid in seen:
            del cell.metadata["nbgrader"]
            if m.get("grade") or m.get("solution") or m.get("locked"):
                notes.append(f"cell {i} ({gid}): not a cell of the assignment, run as student code")
            continue
        seen.add(gid)
        want = dict(nbgrader_meta(ref))
        if any(m.get(k) != want.get(k) for k in ("grade", "solution", "locked", "points")):
            notes.append(f"cell {i} ({gid}): its nbgrader role was changed, the instructor's is used")
        cell.metadata["nbgrader"] = want
        if not want.get("solution") or cell.cell_type != ref.cell_type:
            _become(cell, ref)
    return notes


def _become(cell, ref) -> None:
    """Give ``cell`` the instructor's source and type (a read-only cell, or an answer cell whose type was changed)."""
    keep_source = bool(nbgrader_meta(ref).get("solution"))
    if cell.cell_type != ref.cell_type:
        cell.cell_type = ref.cell_type
        if ref.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
        else:
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    if not keep_source:
        cell.source = ref.source
