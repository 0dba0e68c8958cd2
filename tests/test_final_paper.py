"""The final project: late policy at every boundary, the paper notebook's grading layout, the
HTML export on a fresh copy, and the course documents (rubric, reading list, syllabus)."""
import csv
import json
import re
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from course_lib.cli import main as cli_main
from course_lib.late_policy import (
    BEIJING,
    LADDER,
    POINTS_TO_LETTER,
    days_late,
    final_grade,
    grade_csv,
    letter_from_points,
    parse_timestamp,
)

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "course_lib.cli"]
DEADLINE = date(2027, 1, 1)
UTC = timezone.utc


def cst(day, h=12, m=0, s=0, month=1, year=2027):
    return datetime(year, month, day, h, m, s, tzinfo=BEIJING)


def grade(paper, t, readings=2, presented=True):
    return final_grade(paper, t, n_readings=readings, presented=presented, deadline=DEADLINE).grade


# ------------------------------------------------------------------ the time rule

def test_last_second_of_the_deadline_day_is_on_time_and_midnight_is_late():
    assert days_late(cst(1, 23, 59, 59), DEADLINE) == 0
    assert days_late(cst(2, 0, 0, 0), DEADLINE) == 1
    assert grade("C", cst(1, 23, 59, 59)) == "B+"  # on time: at least B+
    assert grade("C", cst(2, 0, 0, 0)) == "C"  # late: the guarantee is gone
    assert grade("A", cst(1, 23, 59, 59)) == "A"
    assert grade("A", cst(2, 0, 0, 0)) == "B+"


def test_utc_timestamps_count_by_the_beijing_day():
    # 15:59:59 UTC on 1 Jan is 23:59:59 CST (on time); 16:00 UTC is already 2 Jan in Beijing
    assert grade("A", datetime(2027, 1, 1, 15, 59, 59, tzinfo=UTC)) == "A"
    assert grade("A", datetime(2027, 1, 1, 16, 0, 0, tzinfo=UTC)) == "B+"
    # 20:00 on 31 Dec in New York (UTC-5) is 09:00 on 1 Jan in Beijing: on time
    assert days_late(datetime(2026, 12, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5))), DEADLINE) == 0
    # 11:30 on 1 Jan in New York is 00:30 on 2 Jan in Beijing: one day late
    assert days_late(datetime(2027, 1, 1, 11, 30, tzinfo=timezone(timedelta(hours=-5))), DEADLINE) == 1


@pytest.mark.parametrize("day, cap", [(2, "B+"), (3, "B"), (4, "B-"), (5, "C+"), (6, "C"), (7, "C-"), (8, "D"), (9, "D"), (31, "D")])
def test_each_late_day_caps_the_grade_from_its_first_to_its_last_second(day, cap):
    for t in (cst(day, 0, 0, 0), cst(day, 23, 59, 59)):
        assert grade("A", t) == cap, f"an A submitted at {t} should end at {cap}"
    # the cap never raises a grade
    assert grade("D", cst(day, 12)) == "D"
    # and the second before the day still belongs to the previous day, with its better cap
    before = grade("A", cst(day, 0, 0, 0) - timedelta(seconds=1))
    expected = {2: "A", 3: "B+", 4: "B", 5: "B-", 6: "C+", 7: "C", 8: "C-"}.get(day, "D")
    assert before == expected, f"an A at 23:59:59 before day {day} should end at {expected}, got {before}"


def test_late_grades_below_the_cap_stay():
    assert grade("B-", cst(2)) == "B-"
    assert grade("B-", cst(4)) == "B-"
    assert grade("B-", cst(5)) == "C+"


def test_on_time_floor_only_raises():
    for letter in LADDER:
        expected = letter if LADDER.index(letter) <= LADDER.index("B+") else "B+"
        assert grade(letter, cst(1, 8)) == expected
    assert grade("D", datetime(2026, 12, 20, tzinfo=BEIJING)) == "B+"  # early is on time too


# ------------------------------------------------------------------ step-downs

def test_fewer_than_two_readings_one_step_no_presentation_two_steps():
    assert grade("A", cst(1), readings=2) == "A"
    assert grade("A", cst(1), readings=1) == "A-"
    assert grade("A", cst(1), readings=0) == "A-"
    assert grade("A", cst(1), readings=5, presented=False) == "B+"
    assert grade("A", cst(1), readings=1, presented=False) == "B"


def test_step_downs_come_after_the_time_rule():
    # on time, C paper: floor to B+, then one step for the missing reading -> B
    assert grade("C", cst(1), readings=1) == "B"
    # 3 Jan cap B, then two steps for no presentation -> C+
    assert grade("A", cst(3), presented=False) == "C+"


def test_step_downs_stop_at_D():
    assert grade("A", cst(8), readings=0, presented=False) == "D"
    assert grade("C-", cst(7), presented=False) == "D"  # 7 Jan: C-, two steps -> D
    assert grade("A", cst(7), readings=1) == "D"  # C- one step -> D
    assert grade("A", cst(6), readings=1, presented=False) == "D"  # C three steps -> D
    d = final_grade("A", cst(7), n_readings=0, presented=False, deadline=DEADLINE)
    assert d.grade == "D" and "lowest" in d.reason


def test_reason_names_every_rule_applied():
    d = final_grade("A-", cst(3, 9, 12), n_readings=1, presented=False, deadline=DEADLINE)
    assert d.grade == "C"
    for part in ("paper A-", "2 days late", "2027-01-03 09:12:00 CST", "at most B", "1 annotated reading", "no course presentation"):
        assert part in d.reason, f"{part!r} missing from {d.reason!r}"


def test_rubric_points_map_to_letters():
    assert [letter_from_points(p) for p in (100, 90, 89.9, 85, 80, 75, 70, 65, 60, 55, 54.9, 0)] == [
        "A", "A", "A-", "A-", "B+", "B", "B-", "C+", "C", "C-", "D", "D"]
    assert grade("87", cst(1)) == "A-" and grade(72.5, cst(3)) == "B-"
    with pytest.raises(ValueError, match="0..100"):
        letter_from_points(101)


# ------------------------------------------------------------------ bad input

def test_naive_times_are_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="no time zone"):
        grade("A", datetime(2027, 1, 1, 23, 0))
    with pytest.raises(ValueError, match="no time zone"):
        parse_timestamp("2027-01-01 23:00:00")
    assert parse_timestamp("2027-01-01 23:00:00", naive_tz=UTC) == datetime(2027, 1, 1, 23, tzinfo=UTC)


def test_unknown_letters_and_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="unknown letter"):
        grade("F", cst(1))
    with pytest.raises(ValueError, match="n_readings"):
        final_grade("A", cst(1), n_readings=-1, presented=True, deadline=DEADLINE)
    with pytest.raises(TypeError, match="deadline"):
        final_grade("A", cst(1), n_readings=2, presented=True, deadline=datetime(2027, 1, 1, tzinfo=BEIJING))


@pytest.mark.parametrize("text, expected", [
    ("2027-01-01T23:59:59+08:00", cst(1, 23, 59, 59)),
    ("2027-01-01T15:59:59Z", cst(1, 23, 59, 59)),
    ("2027-01-01 15:59:59.000000 UTC", cst(1, 23, 59, 59)),  # nbgrader's timestamp.txt (Exchange.timezone = UTC)
    ("2027-01-01 23:59:59.000000 CST", cst(1, 23, 59, 59)),  # nbgrader with Exchange.timezone = Asia/Shanghai
    ("2027-01-01 23:59:59 +0800", cst(1, 23, 59, 59)),
])
def test_parse_timestamp_reads_iso_and_nbgrader_forms(text, expected):
    assert parse_timestamp(text) == expected


def test_unknown_zone_names_are_rejected():
    with pytest.raises(ValueError, match="unknown time zone"):
        parse_timestamp("2027-01-01 23:00:00 PST")


# ------------------------------------------------------------------ CSV in, CSV out

def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student_id", "paper_grade", "timestamp", "readings", "presented"])
        w.writerows(rows)


def _read_csv(path):
    with open(path, newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f)}


def test_class_csv_through_the_cli(tmp_path, capsys):
    src, out = tmp_path / "class.csv", tmp_path / "final.csv"
    _write_csv(src, [
        ["ontime", "C", "2027-01-01T23:59:59+08:00", 2, "yes"],
        ["utc_late", "A", "2027-01-01T16:00:00Z", 2, "yes"],
        ["points", "91", "2027-01-04T10:00:00+08:00", 1, "no"],  # A, capped B-, three steps down -> C-
        ["from_nbgrader", "A-", "", 2, "yes"],
        ["from_export", "B", "", 2, "yes"],
    ])
    sub = tmp_path / "submitted" / "from_nbgrader" / "final_paper"
    sub.mkdir(parents=True)
    (sub / "timestamp.txt").write_text("2027-01-02 16:30:00.123456 UTC")  # 3 Jan 00:30 CST
    export = tmp_path / "grades.csv"  # the columns `nbgrader export` writes; its times are naive UTC
    with open(export, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email", "raw_score",
                    "late_submission_penalty", "score", "max_score"])
        w.writerow(["a0_setup", "", "2026-10-01 10:00:00", "from_export", "", "", "", 5, 0, 5, 5])
        w.writerow(["final_paper", "", "2027-01-01 15:00:00.5", "from_export", "", "", "", 0, 0, 0, 0])
    rc = cli_main(["final-grades", str(src), "-o", str(out), "--deadline", "2027-01-01",
                   "--submitted", str(tmp_path / "submitted"), "--nbgrader-export", str(export)])
    assert rc == 0, capsys.readouterr().err
    got = _read_csv(out)
    assert {k: v["final_grade"] for k, v in got.items()} == {
        "ontime": "B+", "utc_late": "B+", "points": "C-", "from_nbgrader": "B", "from_export": "B+"}
    assert got["from_nbgrader"]["submitted_cst"] == "2027-01-03 00:30:00"
    assert got["from_export"]["days_late"] == "0"
    assert "91 points = A" in got["points"]["reason"]


def test_cli_refuses_naive_times_unless_told_they_are_utc(tmp_path, capsys):
    src, out = tmp_path / "class.csv", tmp_path / "final.csv"
    _write_csv(src, [["s1", "A", "2027-01-01 16:00:00", 2, "yes"]])
    rc = cli_main(["final-grades", str(src), "-o", str(out), "--deadline", "2027-01-01"])
    err = capsys.readouterr().err
    assert rc == 1 and "no time zone" in err and "line 2" in err
    assert not out.exists()
    rc = cli_main(["final-grades", str(src), "-o", str(out), "--deadline", "2027-01-01", "--naive-utc"])
    assert rc == 0, capsys.readouterr().err
    assert _read_csv(out)["s1"]["final_grade"] == "B+"


def test_grade_csv_names_missing_columns(tmp_path):
    src = tmp_path / "c.csv"
    src.write_text("student_id,grade\ns1,A\n")
    with pytest.raises(ValueError, match="missing column"):
        grade_csv(src, tmp_path / "o.csv", deadline=DEADLINE)


# ------------------------------------------------------------------ the paper notebook

def _cells(path):
    return json.loads(Path(path).read_text())["cells"]


def _nbg(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


RUBRIC_ROWS = re.compile(r"^\|\s*\d\s*\|[^|]*[(（]`(\w+)`[)）][^|]*\|\s*(\d+)\s*\|", re.M)


def test_final_paper_is_hand_graded_only_with_the_rubrics_points():
    cells = _cells(ROOT / "solutions" / "final_paper" / "final_paper.ipynb")
    graded = {_nbg(c)["grade_id"]: _nbg(c)["points"] for c in cells if _nbg(c).get("grade")}
    for c in cells:
        m = _nbg(c)
        if m.get("grade"):
            assert c["cell_type"] == "markdown" and m.get("solution"), f"{m['grade_id']}: only hand-graded markdown answers"
            assert "**Grading (" in "".join(c["source"]), f"{m['grade_id']}: the source ends with the grader's rubric"
        assert not (c["cell_type"] == "code" and m.get("grade")), "no auto-graded cells in the final paper"
    assert sum(graded.values()) == 100
    for rubric in ("rubric.md", "rubric_zh.md"):
        rows = {gid: int(p) for gid, p in RUBRIC_ROWS.findall((ROOT / "course" / rubric).read_text())}
        assert rows == graded, f"course/{rubric} lists {rows}, the notebook grades {graded}"
    # guidance cells are locked and tagged so the export can leave them out
    for c in cells:
        if "guidance" in c.get("metadata", {}).get("tags", []):
            assert _nbg(c).get("locked") and not _nbg(c).get("grade")


def test_rubric_letters_match_the_code():
    for rubric in ("rubric.md", "rubric_zh.md"):
        text = (ROOT / "course" / rubric).read_text()
        for threshold, letter in POINTS_TO_LETTER[:-1]:
            assert f"| {threshold} | {letter} |" in text, f"course/{rubric}: {threshold} -> {letter} missing"


def test_release_has_the_templates_and_no_solutions():
    rel = ROOT / "assignments" / "final_paper"
    assert (rel / "annotated_reading_template.md").is_file()
    text = (rel / "final_paper.ipynb").read_text()
    assert "Right for the wrong reason" not in text and "**Grading (" not in text
    answers = [c for c in _cells(rel / "final_paper.ipynb") if _nbg(c).get("solution")]
    assert len(answers) == 7 and all("".join(c["source"]) == "YOUR ANSWER HERE" for c in answers)


@pytest.mark.slow
def test_export_paper_to_html_on_a_fresh_copy(tmp_path):
    """One command, a fresh folder, a fresh kernel: the paper comes out as one HTML file with its figure."""
    shutil.copy(ROOT / "solutions" / "final_paper" / "final_paper.ipynb", tmp_path / "paper.ipynb")
    r = subprocess.run(CLI + ["export-paper", "paper.ipynb"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (tmp_path / "paper.html").read_text(encoding="utf-8")
    assert "Right for the wrong reason" in html
    assert "times the object" in html  # the experiment's printed output
    assert "data:image/png;base64" in html  # the figure, embedded
    assert "Before you submit" not in html and "Worked example" not in html  # guidance left out


def test_export_paper_errors_are_clear(tmp_path, capsys):
    assert cli_main(["export-paper", str(tmp_path / "none.ipynb")]) == 1
    assert "no notebook" in capsys.readouterr().err
    if shutil.which("xelatex") is None:
        nb = tmp_path / "p.ipynb"
        shutil.copy(ROOT / "assignments" / "final_paper" / "final_paper.ipynb", nb)
        assert cli_main(["export-paper", str(nb), "--to", "pdf", "--no-execute"]) == 1
        assert "print that page to PDF" in capsys.readouterr().err


def test_export_without_execution_keeps_guidance_on_request(tmp_path, capsys):
    nb = tmp_path / "p.ipynb"
    shutil.copy(ROOT / "assignments" / "final_paper" / "final_paper.ipynb", nb)
    rc = cli_main(["export-paper", str(nb), "--no-execute", "--keep-guidance", "-o", str(tmp_path / "out" / "p.html")])
    assert rc == 0, capsys.readouterr().err
    assert "Before you submit" in (tmp_path / "out" / "p.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------ course documents

COURSE = ROOT / "course"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _refs(text):
    """The reference bullets of the reading list (one per line, under the headings)."""
    return [line[2:].strip() for line in text.splitlines() if line.startswith("* ") and re.search(r"\((1[89]|20)\d\d\)", line)]


def test_reading_list_entries_have_year_and_venue():
    text = (COURSE / "reading_list.md").read_text()
    refs = _refs(text)
    assert len(refs) >= 60
    for line in text.splitlines():
        if line.startswith("* "):
            assert line[2:] in refs, f"reading list entry without a (year): {line}"
    for r in refs:
        assert re.search(r"\*[^*]+\*|arXiv:\d{4}\.\d{4,5}", r.split(")", 1)[1]), f"no venue or arXiv id: {r}"
        for m in re.finditer(r"arXiv:(\d{2})(\d{2})\.\d{4,5}", r):
            assert 1 <= int(m.group(2)) <= 12, f"malformed arXiv id in {r}"
    titles = [r.split(").", 1)[1].split(".")[0].strip().lower() for r in refs]
    assert len(titles) == len(set(titles)), "a reference appears twice"
    starred = [r for r in refs if r.startswith("★")]
    assert len(starred) >= 10, "the annotated readings need a choice of assigned papers"


def test_reading_list_has_the_lectures_references():
    text = (COURSE / "reading_list.md").read_text()
    for needle in ("Ribeiro, M. T.", "Lundberg, S. M. & Lee", "Goodfellow, I. J.", "Madry, A.", "Adebayo, J.",
                   "Selvaraju", "Sundararajan, M., Taly", "Wen, Y.", "Zou, A.", "Kim, B., Wattenberg", "Bricken, T.",
                   "Olah, C., Mordvintsev", "Chen, C., Li, O."):
        assert needle in text, f"{needle} missing from the reading list"


def test_course_documents_link_to_each_other_and_the_links_resolve():
    syllabus = (COURSE / "syllabus.md").read_text()
    for target in ("reading_list.md", "final_project.md", "rubric.md", "rubric_zh.md", "glossary.md"):
        assert f"]({target}" in syllabus, f"the syllabus does not link {target}"
    for doc in COURSE.glob("*.md"):
        for m in LINK.finditer(doc.read_text()):
            target = m.group(1)
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_final_project_page_states_the_policy_the_code_applies():
    text = (COURSE / "final_project.md").read_text()
    for day, cap in zip(range(2, 8), ("B+", "B", "B-", "C+", "C", "C-")):
        assert f"| {day} January" in text and f"at most {cap} |" in text
    assert "8 January or later | D |" in text
    # the two examples in the text, computed
    assert grade("C", cst(1), readings=1) == "B"
    assert grade("A", cst(3), presented=False) == "C+"


def test_glossary_rows_have_english_chinese_and_a_meaning():
    rows = [line for line in (COURSE / "glossary.md").read_text().splitlines() if line.startswith("| ") and not line.startswith("| English")]
    assert len(rows) >= 60
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), f"glossary row needs English | 中文 | meaning: {row}"
        assert re.search(r"[\u4e00-\u9fff]", cells[1]), f"no Chinese term in: {row}"
