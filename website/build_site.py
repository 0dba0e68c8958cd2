"""Build the course website: `make site` (or `python website/build_site.py`).

1. Lectures: reuse the executed copies that the notebook tests write to build/executed/lectures/
   (their metadata course_lib.source_sha256 is the sha256 of the committed notebook); execute only
   the lectures whose copy is missing or stale (or has no figures), as tests/test_notebooks.py does but
   with matplotlib's inline backend so that figures are kept, and save them there.
   Solutions are never executed or shown.
2. Stage the Sphinx sources in build/site-src/: website/ (config, home, instructors' page), course/*.md,
   the executed lectures (figures get alt text) and the RELEASED assignments from assignments/
   (tasks and visible tests only; the build stops if a solution or hidden-test marker is in them).
3. sphinx-build (MyST-NB, book theme) into a fresh build/site/.

Options (for quick previews while writing): --skip-missing leaves out lectures that have no fresh
executed copy instead of executing them; --only 02_ 03_ builds only those lectures. Open build/site/index.html, or serve the folder:
`python -m http.server -d build/site`.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEBSITE = ROOT / "website"
EXECUTED = ROOT / "build" / "executed"
SRC = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
DOCTREES = ROOT / "build" / "site-doctrees"
FORBIDDEN_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION", "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<p class="course-note"><strong>Interactive widget.</strong> It runs in JupyterLab: '
               "open this lecture there to use it.</p>")


# ----------------------------------------------------------------------------- lectures
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def executed_copy(lecture: Path) -> Path:
    return EXECUTED / lecture.relative_to(ROOT)


def draws_figures(nb: dict) -> bool:
    return any(c["cell_type"] == "code" and re.search(r"\bplt\.|\bplot\.|imshow\(|\.plot\(", _text(c)) for c in nb["cells"])


def n_images(nb: dict) -> int:
    return sum(1 for c in nb["cells"] for o in c.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {})))


def is_fresh(lecture: Path) -> bool:
    """The executed copy exists, was made from the committed bytes, and holds the lecture's figures
    (a copy executed with a non-inline matplotlib backend, e.g. MPLBACKEND=Agg, has none)."""
    copy = executed_copy(lecture)
    if not copy.is_file():
        return False
    nb = json.loads(copy.read_text(encoding="utf-8"))
    if nb.get("metadata", {}).get("course_lib", {}).get("source_sha256") != sha256(lecture):
        return False
    if n_images(nb) == 0 and draws_figures(nb):
        print(f"  {copy.relative_to(ROOT)} has no figures (executed without the inline matplotlib backend): executing again")
        return False
    return True


def execute(lecture: Path) -> None:
    """Execute one lecture as tests/test_notebooks.py does and save the copy where the tests save theirs."""
    import nbformat

    from course_lib.notebooks import execute_notebook

    raw = lecture.read_bytes()
    nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
    t0 = time.time()
    execute_notebook(nb, lecture.parent)  # as tests/test_notebooks.py does (figures kept as outputs)
    nb.metadata.setdefault("course_lib", {})["source_sha256"] = hashlib.sha256(raw).hexdigest()
    out = executed_copy(lecture)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out))
    print(f"  executed {lecture.relative_to(ROOT)} in {time.time() - t0:.0f} s")


def _text(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def title_of(nb: dict, fallback: str) -> str:
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _text(cell).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _plot_titles(code: str) -> list[str]:
    """String literals given to set_title / suptitle / title= in a code cell (what the figure says it shows)."""
    titles = []
    for m in re.finditer(r"(?:set_title|suptitle|title)\s*[\(=]\s*(f?)(\"[^\"\n]{3,120}\"|'[^'\n]{3,120}')", code):
        if m.group(1):  # an f-string: keep its fixed text, if that says something
            fixed = re.sub(r"\{[^}]*\}", "…", m.group(2)[1:-1])
            if len(re.findall(r"[A-Za-z]", fixed)) >= 12:
                titles.append(fixed)
            continue
        try:
            titles.append(ast.literal_eval(m.group(2)))
        except (ValueError, SyntaxError):
            pass
    return titles[:3]


def _first_comment(code: str) -> str:
    for line in code.splitlines():
        line = line.strip()
        if line.startswith("#") and len(line) > 3:
            return line.lstrip("#").strip().rstrip(":,;")
    return ""


def prepare_lecture(nb: dict) -> dict:
    """Alt text for every figure (from the section, the plot titles and the cell's comment); widget
    outputs become a note (they need a live kernel)."""
    title = title_of(nb, "this lecture")
    section = title
    n_fig = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _text(cell).splitlines():
                if re.match(r"#{1,3} ", line):
                    section = re.sub(r"[$*`]", "", line.lstrip("#")).strip()
            continue
        if cell["cell_type"] != "code":
            continue
        outputs = cell.get("outputs", [])
        for out in outputs:
            data = out.get("data", {})
            if WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
        if any(k.startswith("image/") for out in outputs for k in out.get("data", {})):
            n_fig += 1
            code = _text(cell)
            alt = f"Figure {n_fig} of “{title}”, section “{section}”"
            titles = _plot_titles(code)
            if titles:
                alt += ": " + "; ".join(titles)
            comment = _first_comment(code)
            if comment:
                alt += f" ({comment})"
            image = cell.setdefault("metadata", {}).setdefault("mystnb", {}).setdefault("image", {})
            image.setdefault("alt", alt[:300])
    return nb


# ----------------------------------------------------------------------------- staging
def write_if_changed(path: Path, data: bytes, staged: set[Path]) -> None:
    staged.add(path)
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def check_released(text: str, where: str) -> None:
    for marker in FORBIDDEN_MARKERS:
        if marker in text:
            sys.exit(f"error: {where} contains {marker!r}: the website shows released assignments only. "
                     "Regenerate assignments/ with `make release`.")


def cli_reference() -> str:
    """Each `course-lib` command with its help, read from the real command line (course_lib.cli.main's parser)."""
    from course_lib import cli

    class Captured(Exception):
        pass

    def capture(parser, *args, **kwargs):
        raise Captured(parser)

    os.environ.setdefault("COLUMNS", "100")
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        cli.main([])
    except Captured as got:
        parser = got.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = []
    for choice in sub._choices_actions:
        summary = (choice.help or "").strip()
        help_text = sub.choices[choice.dest].format_help().strip()
        parts.append(f"### `course-lib {choice.dest}`\n\n{summary[:1].upper() + summary[1:]}.\n\n```text\n{help_text}\n```\n")
    return "\n".join(parts)


def stage(lectures: list[Path]) -> None:
    staged: set[Path] = set()
    # the website's own pages (templates filled below)
    lecture_rows, assignment_rows = [], []
    for lec in lectures:
        nb = prepare_lecture(json.loads(executed_copy(lec).read_text(encoding="utf-8")))
        write_if_changed(SRC / "lectures" / lec.name, json.dumps(nb, ensure_ascii=False, indent=1).encode(), staged)
        lecture_rows.append(f"* {{doc}}`{title_of(nb, lec.stem)} <lectures/{lec.stem}>`")
    for folder in sorted(p for p in (ROOT / "assignments").iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix not in (".ipynb", ".md"):
                continue
            text = f.read_text(encoding="utf-8")
            check_released(text, str(f.relative_to(ROOT)))
            if f.suffix == ".ipynb":
                nb = json.loads(text)
                for cell in nb["cells"]:  # released notebooks are clean, but never show outputs here
                    if cell["cell_type"] == "code":
                        cell["outputs"], cell["execution_count"] = [], None
                write_if_changed(SRC / "assignments" / folder.name / f.name, json.dumps(nb, ensure_ascii=False, indent=1).encode(), staged)
                assignment_rows.append(f"| {{doc}}`{title_of(nb, f.stem)} <assignments/{folder.name}/{f.stem}>` | `assignments/{folder.name}/{f.name}` |")
            else:
                write_if_changed(SRC / "assignments" / folder.name / f.name, text.encode(), staged)
    for f in sorted((ROOT / "course").glob("*.md")):
        write_if_changed(SRC / "course" / f.name, f.read_bytes(), staged)
    fill = {
        "{{LECTURE_ROWS}}": "\n".join(lecture_rows),
        "{{ASSIGNMENT_ROWS}}": "\n".join(assignment_rows),
        "{{CLI_REFERENCE}}": cli_reference(),
    }
    for f in sorted(WEBSITE.rglob("*")):
        if f.is_dir() or f.name == "build_site.py" or "__pycache__" in f.parts:
            continue
        data = f.read_bytes()
        if f.suffix == ".md":
            text = data.decode("utf-8")
            for key, value in fill.items():
                text = text.replace(key, value)
            data = text.encode("utf-8")
        write_if_changed(SRC / f.relative_to(WEBSITE), data, staged)
    # remove what is no longer a source (a deleted lecture, a renamed page)
    for f in sorted(SRC.rglob("*"), reverse=True):
        if f.is_file() and f not in staged:
            f.unlink()
        elif f.is_dir() and not any(f.iterdir()):
            f.rmdir()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-missing", action="store_true",
                        help="leave out lectures without a fresh executed copy instead of executing them")
    parser.add_argument("--only", nargs="+", metavar="PREFIX",
                        help="only the lectures whose file name starts with one of these (a preview)")
    args = parser.parse_args(argv)
    t0 = time.time()
    lectures = sorted((ROOT / "lectures").glob("*.ipynb"))
    if args.only:
        lectures = [p for p in lectures if p.name.startswith(tuple(args.only))]
    stale = [p for p in lectures if not is_fresh(p)]
    if stale and args.skip_missing:
        print("left out (no fresh executed copy): " + ", ".join(p.name for p in stale))
        lectures = [p for p in lectures if p not in stale]
    elif stale:
        print(f"executing {len(stale)} lecture(s) without a fresh executed copy:")
        for p in stale:
            execute(p)
    SRC.mkdir(parents=True, exist_ok=True)
    stage(lectures)
    t1 = time.time()
    # a fresh Sphinx build each time (a few seconds a page): its incremental mode can keep stale pages and
    # drop unchanged ones from the search index; the costly part, executing lectures, is cached above
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(DOCTREES, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-d", str(DOCTREES), str(SRC), str(OUT)]
    warnings = ROOT / "build" / "site-warnings.txt"
    cmd += ["-w", str(warnings)]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc:
        print(f"error: sphinx-build failed (exit {rc}); see {warnings}", file=sys.stderr)
        return rc
    # outputs of jupyter-cache / myst-nb that are not part of the website
    shutil.rmtree(OUT / ".doctrees", ignore_errors=True)
    for f in (OUT / "_static").glob("*.html"):  # the theme's template macros, not pages
        f.unlink()
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    n_pages = sum(1 for _ in OUT.rglob("*.html"))
    print(f"website: {OUT.relative_to(ROOT)}/index.html ({n_pages} pages, {size / 2**20:.1f} MB; "
          f"staging {t1 - t0:.0f} s, sphinx {time.time() - t1:.0f} s); warnings in {warnings.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
