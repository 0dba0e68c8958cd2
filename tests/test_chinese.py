"""Chinese for the course's own students (issue 27): every lecture ends with a 中文小结 and links the
glossary; every assignment has a 中文任务说明; the course pages needed to hand in the final paper exist in
Chinese and are linked both ways. Reads files only (no notebook is executed), so it takes a second."""
import json
import re
from pathlib import Path

import pytest

from course_lib.late_policy import LATE_CAPS

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "course"
GLOSSARY = COURSE / "glossary.md"
LECTURES = sorted((ROOT / "lectures").glob("*.ipynb"))
ASSIGNMENT_NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb")) + sorted((ROOT / "assignments").glob("*/*.ipynb"))

SUMMARY_HEADING = "## 中文小结"
SUB_HEADINGS = ("### 学习目标", "### 核心思想与公式", "### 常见陷阱", "### 本讲术语")
TASK_HEADING = "### 中文任务说明"
MIN_CJK_SUMMARY = 300
MIN_CJK_TASK = 80
# what a draft leaves behind: English-only stubs and to-do markers
PLACEHOLDERS = re.compile(r"\b(TODO|TBD|FIXME|XXX|Lorem ipsum|placeholder|YOUR ANSWER HERE|to be written|coming soon)\b"
                          r"|待补充|待填写|（略）|此处填写", re.I)


def _cjk(text: str) -> int:
    return len(re.findall(r"[\u4e00-\u9fff]", text))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _section(text: str, heading: str) -> str:
    """The text under a ### heading, up to the next heading of level 2 or 3."""
    start = text.index(heading) + len(heading)
    m = re.search(r"^#{2,3} ", text[start:], flags=re.M)
    return text[start:start + m.start()] if m else text[start:]


def _glossary_terms() -> list[str]:
    """The Chinese terms of the glossary's tables: "忠实性 / 稳定性" gives both, "虚假相关（捷径）" also "虚假相关"."""
    terms = set()
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 3 or cells[1] == "中文":
            continue
        for part in re.split(r"\s*[/、，,]\s*", cells[1]):
            for term in (part, re.sub(r"（.*?）", "", part)):
                if _cjk(term) >= 2:
                    terms.add(term.strip())
    return sorted(terms)


@pytest.mark.parametrize("path", LECTURES, ids=[p.stem for p in LECTURES])
def test_lecture_ends_with_a_chinese_summary(path):
    cells = _cells(path)
    last = cells[-1]
    text = _text(last)
    assert last["cell_type"] == "markdown" and text.startswith(SUMMARY_HEADING), (
        f"{path.name}: the last cell must be a markdown cell starting with {SUMMARY_HEADING!r}")
    positions = []
    for heading in SUB_HEADINGS:
        assert re.search(rf"^{re.escape(heading)}\s*$", text, flags=re.M), f"{path.name}: the 中文小结 has no {heading!r}"
        positions.append(text.index(heading))
    assert positions == sorted(positions), f"{path.name}: the sub-headings must come in the order {SUB_HEADINGS}"
    assert _cjk(text) >= MIN_CJK_SUMMARY, f"{path.name}: the 中文小结 has {_cjk(text)} Chinese characters (at least {MIN_CJK_SUMMARY})"
    assert not PLACEHOLDERS.search(text), f"{path.name}: placeholder left in the 中文小结: {PLACEHOLDERS.search(text).group(0)!r}"
    for heading in SUB_HEADINGS:
        body = _section(text, heading)
        assert _cjk(body) >= 20, f"{path.name}: the section {heading!r} is (nearly) empty or not in Chinese"
    assert "$" in _section(text, "### 核心思想与公式"), f"{path.name}: the key formulas (LaTeX, $...$) are missing"
    # 本讲术语 uses the glossary's Chinese terms, spelled as the glossary spells them (a term set in bold must be one)
    terms_section = _section(text, "### 本讲术语")
    used = [t for t in _glossary_terms() if t in terms_section]
    assert len(used) >= 3, f"{path.name}: 本讲术语 names {len(used)} terms of course/glossary.md ({used}); list the ones the lecture uses"
    glossary = GLOSSARY.read_text(encoding="utf-8")
    unknown = [t for t in re.findall(r"\*\*(.+?)\*\*", terms_section) if _cjk(t) and t not in glossary]
    assert not unknown, f"{path.name}: terms not in course/glossary.md (use the glossary's Chinese term): {unknown}"


@pytest.mark.parametrize("path", LECTURES, ids=[p.stem for p in LECTURES])
def test_lecture_links_the_glossary(path):
    cells = _cells(path)
    linking = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and "](../course/glossary.md" in _text(c)]
    assert linking, f"{path.name} does not link the course glossary (../course/glossary.md)"
    assert linking[0] <= 3, f"{path.name}: the glossary link should be near the top (first in cell {linking[0]})"
    assert GLOSSARY.is_file()


@pytest.mark.parametrize("path", ASSIGNMENT_NOTEBOOKS, ids=[str(p.relative_to(ROOT)) for p in ASSIGNMENT_NOTEBOOKS])
def test_assignment_has_a_chinese_task_summary(path):
    cells = _cells(path)
    found = [(i, c) for i, c in enumerate(cells) if _text(c).startswith(TASK_HEADING)]
    assert len(found) == 1, f"{path.relative_to(ROOT)}: expected one cell starting with {TASK_HEADING!r}, found {len(found)}"
    i, cell = found[0]
    assert cell["cell_type"] == "markdown" and 1 <= i <= 2, f"{path.relative_to(ROOT)}: the 中文任务说明 is a markdown cell right after the title"
    nbg = cell.get("metadata", {}).get("nbgrader", {})
    assert not nbg.get("grade") and not nbg.get("solution") and not nbg.get("task"), "the 中文任务说明 must not be graded or answered"
    text = _text(cell)
    assert _cjk(text) >= MIN_CJK_TASK, f"{path.relative_to(ROOT)}: {_cjk(text)} Chinese characters (at least {MIN_CJK_TASK})"
    assert not PLACEHOLDERS.search(text)


def test_solutions_and_release_carry_the_same_task_summary():
    for src in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        rel = ROOT / "assignments" / src.parent.name / src.name
        pick = lambda p: [_text(c) for c in _cells(p) if _text(c).startswith(TASK_HEADING)]  # noqa: E731
        assert pick(src) == pick(rel), f"{rel.relative_to(ROOT)} is stale: run `make release`"


# ----------------------------------------------------------------------------- course pages in Chinese
ZH_PAGES = {"final_project.md": "final_project_zh.md", "rubric.md": "rubric_zh.md"}


@pytest.mark.parametrize("english, chinese", ZH_PAGES.items())
def test_chinese_course_pages_exist_and_are_linked_both_ways(english, chinese):
    en, zh = COURSE / english, COURSE / chinese
    assert zh.is_file(), f"course/{chinese} is missing"
    zh_text = zh.read_text(encoding="utf-8")
    assert _cjk(zh_text) >= 500, f"course/{chinese} is hardly Chinese"
    assert f"]({chinese})" in en.read_text(encoding="utf-8"), f"course/{english} does not link {chinese}"
    assert f"]({english})" in zh_text, f"course/{chinese} does not link {english}"
    assert f"]({chinese})" in (COURSE / "syllabus.md").read_text(encoding="utf-8"), f"the syllabus does not link {chinese}"
    index = (ROOT / "website" / "index.md").read_text(encoding="utf-8")
    assert f"<course/{zh.stem}>" in index, f"website/index.md: course/{chinese} is in no toctree"
    assert f"(course/{chinese})" in index, f"the website's home page does not link course/{chinese}"


def test_chinese_pages_link_each_other():
    assert "](final_project_zh.md)" in (COURSE / "rubric_zh.md").read_text(encoding="utf-8")
    assert "](rubric_zh.md)" in (COURSE / "final_project_zh.md").read_text(encoding="utf-8")


def test_both_languages_state_the_deadline_second_and_what_cst_means():
    """late_policy.py: on time = the Beijing calendar day of the deadline, to its last second; "CST" = UTC+8."""
    en = (COURSE / "final_project.md").read_text(encoding="utf-8")
    zh = (COURSE / "final_project_zh.md").read_text(encoding="utf-8")
    assert "23:59:59" in en and "UTC+8" in en and re.search(r"\*\*CST\*\*.*China Standard Time", en, flags=re.S)
    assert "23:59:59" in zh and "UTC+8" in zh and "“CST”" in zh
    # the Chinese table gives the same caps as the code, day by day
    for day, cap in zip(range(2, 2 + len(LATE_CAPS)), LATE_CAPS):
        assert re.search(rf"^\| 1 月 {day} 日[^|]*\| 最高 {re.escape(cap)} \|$", zh, flags=re.M), f"1 月 {day} 日 -> 最高 {cap} missing"
    assert f"| 1 月 {2 + len(LATE_CAPS)} 日及以后 | D |" in zh


def test_the_code_applies_what_the_pages_state():
    from datetime import date, datetime, timedelta, timezone

    from course_lib.late_policy import days_late, parse_timestamp

    cst = timezone(timedelta(hours=8))
    deadline = date(2027, 1, 1)
    assert days_late(datetime(2027, 1, 1, 23, 59, 59, tzinfo=cst), deadline) == 0
    assert days_late(datetime(2027, 1, 2, 0, 0, 0, tzinfo=cst), deadline) == 1
    assert parse_timestamp("2027-01-01 23:59:59 CST").utcoffset() == timedelta(hours=8)
