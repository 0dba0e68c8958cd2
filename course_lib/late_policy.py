"""The final project's grading policy as code: lateness, annotated readings, presentation.

The grade ladder, best first (one *step* is one place on it; there is nothing below D)::

    A  >  A-  >  B+  >  B  >  B-  >  C+  >  C  >  C-  >  D

The instructor grades the paper itself with one letter of the ladder, or with the rubric's
points out of 100 (``course/rubric.md``), which ``letter_from_points`` turns into a letter:
90 A, 85 A-, 80 B+, 75 B, 70 B-, 65 C+, 60 C, 55 C-, below 55 D (each the lowest score for it).
The final letter then follows, in this order, all days and times in Beijing time (CST = China
Standard Time, UTC+8, no daylight saving):

1. **Submission time**, against the deadline day D (1 January, 23:59 CST):

   ======================================  ====================================================
   submitted (Beijing time)                effect on the paper's letter
   ======================================  ====================================================
   on day D or before (up to 23:59:59)     on time: at least B+ (a B paper becomes B+; A stays A)
   on D+1 (2 January, 00:00:00-23:59:59)   at most B+ (an A becomes B+; a B stays B)
   on D+2 (3 January)                      at most B
   on D+3 (4 January)                      at most B-
   on D+4 (5 January)                      at most C+
   on D+5 (6 January)                      at most C
   on D+6 (7 January)                      at most C-
   on D+7 (8 January) or later             D
   ======================================  ====================================================

2. **Fewer than two annotated readings**: one step down from the letter of step 1.
3. **No part in the course presentation**: two steps down.

Step-downs apply after the time rule (so they also bite on time: an on-time C paper with one
reading ends at B, not B+), add up (both: three steps), and stop at D.

    >>> from datetime import date, datetime, timezone, timedelta
    >>> cst = timezone(timedelta(hours=8))
    >>> final_grade("B", datetime(2027, 1, 1, 23, 59, 59, tzinfo=cst), n_readings=2, presented=True,
    ...             deadline=date(2027, 1, 1)).grade
    'B+'
    >>> final_grade("A", datetime(2027, 1, 2, 0, 0, 0, tzinfo=cst), n_readings=2, presented=True,
    ...             deadline=date(2027, 1, 1)).grade
    'B+'

Times must carry their time zone: a naive ``datetime`` (or a string without an offset) is
rejected, because 23:30 means a different day in Beijing and in UTC. ``parse_timestamp``
reads ISO 8601 with an offset and the ``... UTC`` form nbgrader writes into a submission's
``timestamp.txt``; ``nbgrader export`` writes naive UTC times, which ``nbgrader_timestamps``
reads as UTC (for a class CSV of naive UTC times: ``course-lib final-grades --naive-utc``).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

LADDER: tuple[str, ...] = ("A", "A-", "B+", "B", "B-", "C+", "C", "C-", "D")
BEIJING = timezone(timedelta(hours=8), "CST")
ON_TIME_FLOOR = "B+"
# caps for submissions 1..6 days after the deadline day; 7 days or more: D
LATE_CAPS: tuple[str, ...] = ("B+", "B", "B-", "C+", "C", "C-")
# the rubric's 100 points -> the paper's letter (course/rubric.md): at least this many points
POINTS_TO_LETTER: tuple[tuple[float, str], ...] = (
    (90, "A"), (85, "A-"), (80, "B+"), (75, "B"), (70, "B-"), (65, "C+"), (60, "C"), (55, "C-"), (0, "D"),
)
READINGS_REQUIRED = 2
STEPS_FEW_READINGS = 1
STEPS_NO_PRESENTATION = 2


@dataclass(frozen=True)
class Decision:
    """The final letter and, in words, how it came about."""

    grade: str
    reason: str
    days_late: int  # 0 = on time; n = submitted on the n-th day after the deadline day

    def __str__(self) -> str:
        return f"{self.grade} ({self.reason})"


def _index(letter: str) -> int:
    key = letter.strip().upper().replace("＋", "+").replace("−", "-")
    if key not in LADDER:
        raise ValueError(f"unknown letter grade {letter!r}; use one of {', '.join(LADDER)}")
    return LADDER.index(key)


def letter_from_points(points: float) -> str:
    """The paper's letter for its rubric points out of 100 (90 and more: A, ..., under 55: D)."""
    p = float(points)
    if not 0 <= p <= 100:
        raise ValueError(f"rubric points lie in 0..100, got {points!r}")
    return next(letter for threshold, letter in POINTS_TO_LETTER if p >= threshold)


def paper_letter(grade: str | float) -> str:
    """A letter of the ladder as given, or rubric points (a number 0..100) turned into one."""
    if isinstance(grade, (int, float)):
        return letter_from_points(grade)
    text = str(grade).strip()
    try:
        return letter_from_points(float(text))
    except ValueError as err:
        if re.fullmatch(r"[\d.]+", text):
            raise err
    return LADDER[_index(text)]


def _aware(t: datetime) -> datetime:
    if not isinstance(t, datetime):
        raise TypeError(f"the submission time must be a datetime, got {type(t).__name__}; use parse_timestamp for text")
    if t.tzinfo is None or t.tzinfo.utcoffset(t) is None:
        raise ValueError(
            f"the submission time {t.isoformat()} has no time zone, so its day in Beijing is unknown; "
            "attach one, e.g. datetime(..., tzinfo=course_lib.late_policy.BEIJING) or a +08:00 / Z offset"
        )
    return t


def days_late(submitted: datetime, deadline: date) -> int:
    """0 if ``submitted`` falls on the deadline day or before it in Beijing time, else how many
    Beijing calendar days after the deadline day it falls (2 January -> 1 for a 1 January deadline)."""
    local = _aware(submitted).astimezone(BEIJING)
    return max(0, (local.date() - deadline).days)


def time_rule(paper_grade: str, submitted: datetime, deadline: date) -> tuple[str, str]:
    """The letter after the submission-time rule alone, with the reason."""
    i = _index(paper_letter(paper_grade))
    n = days_late(submitted, deadline)
    when = _aware(submitted).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S CST")
    if n == 0:
        floor = LADDER.index(ON_TIME_FLOOR)
        j = min(i, floor)
        note = f"on time ({when}): at least {ON_TIME_FLOOR}"
    elif n <= len(LATE_CAPS):
        cap = LADDER.index(LATE_CAPS[n - 1])
        j = max(i, cap)
        note = f"{n} day{'s' if n > 1 else ''} late ({when}): at most {LATE_CAPS[n - 1]}"
    else:
        j = len(LADDER) - 1
        note = f"{n} days late ({when}): D"
    return LADDER[j], note


def final_grade(paper_grade: str | float, submitted: datetime, *, n_readings: int, presented: bool, deadline: date) -> Decision:
    """The final letter for a paper graded ``paper_grade`` (a letter, or rubric points 0..100), submitted at ``submitted`` (timezone-aware),
    with ``n_readings`` annotated readings and presentation attendance ``presented``; ``deadline``
    is the deadline *day* (the course's 1 January), due at 23:59:59 Beijing time. See the module
    docstring for the ladder and the rules."""
    if not isinstance(deadline, date) or isinstance(deadline, datetime):
        raise TypeError(f"deadline must be a date (the deadline day), got {deadline!r}")
    if int(n_readings) != n_readings or n_readings < 0:
        raise ValueError(f"n_readings must be a whole number >= 0, got {n_readings!r}")
    letter, note = time_rule(paper_grade, submitted, deadline)
    given = paper_letter(paper_grade)
    shown = given if str(paper_grade).strip().upper() == given else f"{paper_grade} points = {given}"
    reasons = [f"paper {shown}", f"{note} -> {letter}"]
    steps = 0
    if n_readings < READINGS_REQUIRED:
        steps += STEPS_FEW_READINGS
        reasons.append(f"{n_readings} annotated reading{'s' if n_readings != 1 else ''} (< {READINGS_REQUIRED}): one step down")
    if not presented:
        steps += STEPS_NO_PRESENTATION
        reasons.append("no course presentation: two steps down")
    j = min(_index(letter) + steps, len(LADDER) - 1)
    if steps:
        reasons[-1] += f" -> {LADDER[j]}" + (" (D is the lowest)" if _index(letter) + steps > len(LADDER) - 1 else "")
    return Decision(LADDER[j], "; ".join(reasons), days_late(submitted, deadline))


# ------------------------------------------------------------------ reading timestamps and CSV

# Zone names nbgrader may write after a time (its Exchange.timezone, default UTC). "CST" is read
# as China Standard Time, the course's convention (the rules say "Beijing time, i.e. CST").
_TZ_WORDS = {"UTC": timezone.utc, "GMT": timezone.utc, "Z": timezone.utc, "CST": BEIJING}


def parse_timestamp(text: str, *, naive_tz: timezone | None = None) -> datetime:
    """A timezone-aware datetime from ISO 8601 with an offset ("2027-01-01T23:59:59+08:00",
    "...Z") or the form nbgrader writes into a submission's ``timestamp.txt``
    ("2027-01-01 15:59:59.123456 UTC"; "CST" there means Beijing time, a "+0800" offset works
    too). Text without a zone is rejected unless ``naive_tz`` says what it means (nbgrader's
    gradebook and ``nbgrader export`` hold naive UTC times)."""
    s = str(text).strip()
    if not s:
        raise ValueError("empty submission time")
    zone = None
    m = re.fullmatch(r"(\d.*?\d)\s+([A-Za-z]{1,5}|[+-]\d{4})", s)
    if m:
        word = m.group(2).upper()
        if word[0] in "+-":
            sign = 1 if word[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(word[1:3]), minutes=int(word[3:5])))
        elif word in _TZ_WORDS:
            zone = _TZ_WORDS[word]
        else:
            raise ValueError(
                f"unknown time zone {m.group(2)!r} in {text!r}; write an offset instead, "
                "e.g. 2027-01-01T23:59:00+08:00 for Beijing time"
            )
        s = m.group(1)
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}; use ISO 8601 with an offset, e.g. 2027-01-01T23:59:00+08:00") from None
    if zone is not None:
        if t.tzinfo is not None:
            raise ValueError(f"{text!r} gives both an offset and a zone name")
        t = t.replace(tzinfo=zone)
    if t.tzinfo is None:
        if naive_tz is None:
            raise ValueError(
                f"the time {text!r} has no time zone, so its day in Beijing is unknown; add an offset "
                "(+08:00 for Beijing, Z for UTC), or, for times from `nbgrader export` (which are UTC), "
                "use --naive-utc / naive_tz=timezone.utc"
            )
        t = t.replace(tzinfo=naive_tz)
    return t


def _yes(value: str, column: str, row: int) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "yes", "y", "true", "t", "是"):
        return True
    if v in ("0", "no", "n", "false", "f", "否", ""):
        return False
    raise ValueError(f"row {row}: cannot read {column}={value!r} as yes/no")


def nbgrader_timestamps(path: str | Path, assignment: str = "final_paper") -> dict[str, datetime]:
    """Submission times per student from a ``nbgrader export`` CSV (naive times there are UTC)."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            if row.get("assignment", assignment) != assignment or not (row.get("timestamp") or "").strip():
                continue
            out[row["student_id"]] = parse_timestamp(row["timestamp"], naive_tz=timezone.utc)
    return out


def submitted_timestamps(submitted: str | Path, assignment: str = "final_paper") -> dict[str, datetime]:
    """Submission times per student from nbgrader's ``submitted/<student>/<assignment>/timestamp.txt``."""
    out = {}
    for f in sorted(Path(submitted).glob(f"*/{assignment}/timestamp.txt")):
        out[f.parent.parent.name] = parse_timestamp(f.read_text())
    return out


FIELDS_OUT = ["student_id", "paper_grade", "submitted_cst", "days_late", "readings", "presented", "final_grade", "reason"]


def grade_csv(
    src: str | Path,
    dst: str | Path,
    *,
    deadline: date,
    naive_tz: timezone | None = None,
    nbgrader_export: str | Path | None = None,
    submitted: str | Path | None = None,
    assignment: str = "final_paper",
) -> list[Decision]:
    """Read a class CSV (columns ``student_id, paper_grade, timestamp, readings, presented``),
    write ``dst`` with the final letters and reasons. A row without a ``timestamp`` takes the
    student's submission time from nbgrader: the ``submitted/`` folder (``timestamp.txt``) or a
    ``nbgrader export`` CSV (naive UTC there)."""
    stamps = nbgrader_timestamps(nbgrader_export, assignment) if nbgrader_export else {}
    if submitted:
        stamps.update(submitted_timestamps(submitted, assignment))
    decisions, rows = [], []
    with open(src, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"student_id", "paper_grade", "readings", "presented"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{src}: missing column(s) {sorted(missing)}; expected student_id, paper_grade, timestamp, readings, presented")
        for k, row in enumerate(reader, start=2):
            sid = row["student_id"].strip()
            text = (row.get("timestamp") or "").strip()
            try:
                if text:
                    t = parse_timestamp(text, naive_tz=naive_tz)
                elif sid in stamps:
                    t = stamps[sid]
                else:
                    raise ValueError(f"no timestamp for {sid!r} (and none from nbgrader)")
                d = final_grade(row["paper_grade"], t, n_readings=int(row["readings"]), presented=_yes(row["presented"], "presented", k), deadline=deadline)
            except ValueError as err:
                raise ValueError(f"{src}, line {k}: {err}") from None
            decisions.append(d)
            rows.append({
                "student_id": sid,
                "paper_grade": row["paper_grade"].strip(),
                "submitted_cst": t.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
                "days_late": d.days_late,
                "readings": int(row["readings"]),
                "presented": "yes" if _yes(row["presented"], "presented", k) else "no",
                "final_grade": d.grade,
                "reason": d.reason,
            })
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS_OUT)
        w.writeheader()
        w.writerows(rows)
    return decisions


def add_command(sub) -> None:
    """``course-lib final-grades`` (registered by course_lib.cli)."""
    import sys

    def run(args) -> int:
        try:
            deadline = date.fromisoformat(args.deadline)
            decisions = grade_csv(args.csv, args.out, deadline=deadline, naive_tz=timezone.utc if args.naive_utc else None,
                                  nbgrader_export=args.nbgrader_export, submitted=args.submitted)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{len(decisions)} final grades written to {args.out}")
        return 0

    p = sub.add_parser("final-grades", help="final-project letters from paper grades, submission times, readings and presentation")
    p.add_argument("csv", help="class CSV with columns student_id, paper_grade, timestamp, readings, presented")
    p.add_argument("-o", "--out", default="final_grades.csv", help="output CSV (default: final_grades.csv)")
    p.add_argument("--deadline", required=True, help="the deadline day, e.g. 2027-01-01 (due 23:59:59 Beijing time)")
    p.add_argument("--naive-utc", action="store_true", help="read timestamps without a zone as UTC (as nbgrader export writes them)")
    p.add_argument("--nbgrader-export", help="a `nbgrader export` CSV to take missing timestamps from")
    p.add_argument("--submitted", help="nbgrader's submitted/ folder to take missing timestamps from (timestamp.txt)")
    p.set_defaults(func=run)
