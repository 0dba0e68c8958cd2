"""The course website (`make site`), built and then read in a real browser (Debian's headless Chromium).

Runs after test_notebooks.py (alphabetical order), which leaves the executed lectures in
build/executed/, so building the site executes nothing. Checks: no solution or hidden test reaches the
site; every page loads without console errors or failed requests; every image loads and has alt text;
math is typeset by MathJax; every internal link (and its #anchor) resolves; the glossary is linked from
every page; the search finds a lecture. Screenshots of the home page, a lecture with figures and an
assignment go to tests/reports/site_*.png; timings and the size to tests/reports/site.json.

COURSE_SITE_ARGS="--only 00_ 03_" previews a few lectures (all lectures are required otherwise).
"""
import functools
import html
import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# one pytest-xdist worker runs this module (make test: --dist loadgroup): the website is built from the lectures that test_notebooks.py executes in the same group before it
pytestmark = pytest.mark.xdist_group("lectures")

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "build" / "site"
SRC = ROOT / "build" / "site-src"
REPORTS = ROOT / "tests" / "reports"
CHROMIUM = os.environ.get("COURSE_SITE_CHROMIUM", "/usr/bin/chromium")  # Debian's; elsewhere point it at a Chromium
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SITE_ARGS = shlex.split(os.environ.get("COURSE_SITE_ARGS", ""))
MAX_SITE_MB = 50
# the budget is 2 min each on a quiet 2-core machine; the asserts leave 2x for a shared, busy one
MAX_BUILD_S = MAX_BROWSER_S = 240
PAGE_TIMEOUT_MS = 30_000


def _record(**kv):
    REPORTS.mkdir(exist_ok=True)
    path = REPORTS / "site.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(kv)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


@pytest.fixture(scope="module")
def site():
    t0 = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "website" / "build_site.py"), *SITE_ARGS],
                         cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    assert out.returncode == 0, f"make site failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    executed = "executing" in out.stdout
    size_mb = sum(f.stat().st_size for f in SITE.rglob("*") if f.is_file()) / 2**20
    _record(build_seconds=round(seconds, 1), build_executed_lectures=executed, size_mb=round(size_mb, 2),
            load_average=os.getloadavg()[0])
    print(f"\nmake site: {seconds:.0f} s{' (executed lectures)' if executed else ''}, {size_mb:.1f} MB")
    assert executed or seconds <= MAX_BUILD_S, f"make site took {seconds:.0f} s from executed notebooks (budget {MAX_BUILD_S} s)"
    return SITE


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (`make browser`, run by `make test`), "
        "or set COURSE_SITE_CHROMIUM to a Chromium or Chrome executable"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _pages(site):
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "_static" not in p.parts)


# --------------------------------------------------------------------------- no solutions on the site
def _blocks(text, begin, end):
    return re.findall(re.escape(begin) + r"(.*?)" + re.escape(end), text, flags=re.S)


def _cell_text(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _public_text():
    """What the course publishes anyway: released assignments, lectures, course documents."""
    texts = []
    for nb in sorted((ROOT / "assignments").glob("*/*.ipynb")) + sorted((ROOT / "lectures").glob("*.ipynb")):
        texts += [_cell_text(c) for c in json.loads(nb.read_text())["cells"]]
    texts += [f.read_text() for f in sorted((ROOT / "course").glob("*.md")) + sorted((ROOT / "assignments").glob("*/*.md"))]
    return " ".join(" ".join(t.split()) for t in texts)


def _secret_lines():
    """Lines of reference solutions and hidden tests that nothing the course publishes contains."""
    public = _public_text()
    secrets = {}
    for source in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in json.loads(source.read_text())["cells"]:
            text = _cell_text(cell)
            nbg = cell.get("metadata", {}).get("nbgrader", {})
            parts = _blocks(text, "### BEGIN SOLUTION", "### END SOLUTION")
            parts += _blocks(text, "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
            if nbg.get("solution") and cell["cell_type"] == "markdown" and "### BEGIN SOLUTION" not in text:
                parts.append(text)  # a written answer: the whole cell is the solution
            for part in parts:
                for line in part.splitlines():
                    line = " ".join(line.split())
                    if len(line) >= 25 and line not in public:
                        secrets.setdefault(line, str(source.relative_to(ROOT)))
    return secrets


def _visible_text(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".html":
        text = re.sub(r"<[^>]+>", "", text)
    return " ".join(html.unescape(text).split())


def test_no_solution_or_hidden_test_reaches_the_site(site):
    secrets = _secret_lines()
    assert len(secrets) > 20, "found almost no solution lines in solutions/: the check would prove nothing"
    markers = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    leaks = []
    for f in sorted(site.rglob("*")):
        if not f.is_file() or f.suffix not in (".html", ".js", ".txt", ".json", ".ipynb", ".md", ".inv"):
            continue
        if "_static" in f.parts and f.name != "documentation_options.js":
            continue  # the theme's and MathJax's own files
        text = _visible_text(f) if f.suffix != ".inv" else ""
        leaks += [f"{f.relative_to(site)}: marker {m!r}" for m in markers if m in text]
        leaks += [f"{f.relative_to(site)}: line of {src}: {line[:80]!r}" for line, src in secrets.items() if line in text]
    assert not leaks, "solutions or hidden tests on the website:\n" + "\n".join(leaks[:20])
    # the check has teeth: code lines of a released notebook are found, the same way, on its page
    released = sorted((ROOT / "assignments").glob("a*/*.ipynb"))[0]
    page = _visible_text(site / "assignments" / released.parent.name / (released.stem + ".html"))
    code = [" ".join(line.split()) for c in json.loads(released.read_text())["cells"] if c["cell_type"] == "code"
            for line in _cell_text(c).splitlines() if len(line.strip()) >= 25]
    assert code and all(line in page for line in code), "the leak check cannot see code on a rendered page"
    assert not list(site.rglob("*.ipynb")), "raw notebooks are copied into the website"
    assert not (SRC / "solutions").exists()


def test_site_has_every_page_and_stays_small(site):
    pages = set(_pages(site))
    lectures = sorted((ROOT / "lectures").glob("*.ipynb"))
    if not SITE_ARGS:
        for lec in lectures:
            assert f"lectures/{lec.stem}.html" in pages, f"lecture {lec.name} is not on the website"
    for nb in sorted((ROOT / "assignments").glob("*/*.ipynb")):
        assert f"assignments/{nb.parent.name}/{nb.stem}.html" in pages, f"assignment {nb.name} is not on the website"
    for md in sorted((ROOT / "course").glob("*.md")):
        assert f"course/{md.stem}.html" in pages, f"course/{md.name} is not on the website"
    assert {"index.html", "instructors.html", "search.html"} <= pages
    size_mb = sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20
    assert size_mb <= MAX_SITE_MB, f"the website is {size_mb:.1f} MB (budget {MAX_SITE_MB} MB)"
    # the Chinese for the course's students (issue 27): each lecture's 中文小结 (where its source has one, so a
    # preview of a few lectures works), each assignment's 中文任务说明, and the Chinese course pages, linked from home
    for lec in lectures:
        page = site / "lectures" / f"{lec.stem}.html"
        last = json.loads(lec.read_text())["cells"][-1]
        if page.is_file() and _cell_text(last).startswith("## 中文小结"):
            text = _visible_text(page)
            assert "中文小结" in text and "本讲术语" in text, f"lectures/{lec.stem}.html does not show the 中文小结"
    for nb in sorted((ROOT / "assignments").glob("*/*.ipynb")):
        if any(_cell_text(c).startswith("### 中文任务说明") for c in json.loads(nb.read_text())["cells"]):
            assert "中文任务说明" in _visible_text(site / "assignments" / nb.parent.name / (nb.stem + ".html")), (
                f"assignments/{nb.parent.name}/{nb.stem}.html does not show the 中文任务说明")
    home = (site / "index.html").read_text(encoding="utf-8")
    for md in sorted((ROOT / "course").glob("*_zh.md")):
        assert f'href="course/{md.stem}.html' in home, f"the home page does not link course/{md.stem}.html"
    instructors = _visible_text(site / "instructors.html")
    for needle in ("COURSE_LIB_HOME", "make grade", "--network none", "course-lib doctor", "course-lib fetch",
                   "course-lib train-zoo", "course-lib grade-report", "course-lib export-paper", "course-lib final-grades"):
        assert needle in instructors, f"the instructors' page does not mention {needle!r}"


# --------------------------------------------------------------------------- in the browser
LOAD_CHECK = """async () => {
  for (const img of document.images) { img.loading = 'eager'; }
  await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const main = document.querySelector('main') || document.body;
  return {
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight,
                                                    alt: i.getAttribute('alt') || '', inMain: main.contains(i)})),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    math: document.querySelectorAll('.math').length,
    mathRendered: Array.from(document.querySelectorAll('.math')).filter(e => e.querySelector('mjx-container')).length,
    mathErrors: document.querySelectorAll('mjx-merror').length,
    glossary: Array.from(document.querySelectorAll('a[href]')).some(a => a.href.split('#')[0].endsWith('/course/glossary.html')),
    title: document.title,
  };
}"""


def _source_has_math(page):
    stem = page[: -len(".html")]
    for suffix in (".md", ".ipynb"):
        src = SRC / (stem + suffix)
        if src.is_file():
            text = src.read_text(encoding="utf-8")
            if suffix == ".ipynb":
                text = "\n".join(_cell_text(c) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
            return re.search(r"\$[^$\s][^$]*\$", text) is not None
    return False


def test_every_page_in_the_browser(site, server, browser):
    t0 = time.time()
    pages = _pages(site)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems, results = [], {}
    current = {"url": ""}
    page.on("console", lambda m: m.type == "error" and problems.append(f"{current['url']}: console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"{current['url']}: page error: {e}"))
    # a request cut short by the next navigation is no error of the site (404s show up as responses)
    page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "")
            and problems.append(f"{current['url']}: request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"{current['url']}: HTTP {r.status} for {r.url}"))
    for rel in pages:
        current["url"] = rel
        page.goto(server + rel, wait_until="load", timeout=PAGE_TIMEOUT_MS)
        info = page.evaluate(LOAD_CHECK)
        page.wait_for_load_state("networkidle", timeout=PAGE_TIMEOUT_MS)  # fonts MathJax asked for, etc.
        results[rel] = info
        for img in info["images"]:
            if img["w"] == 0 or img["h"] == 0:
                problems.append(f"{rel}: image {img['src']} did not load (natural size {img['w']}x{img['h']})")
            if img["inMain"] and (not img["alt"].strip() or img["alt"].strip() == img["src"]
                                  or img["alt"].strip().endswith((".png", ".jpg", ".svg"))):
                problems.append(f"{rel}: image {img['src']} has no alt text (alt={img['alt']!r})")
        if _source_has_math(rel):
            if info["math"] == 0 or info["mathRendered"] < info["math"]:
                problems.append(f"{rel}: math not typeset ({info['mathRendered']} of {info['math']} formulas)")
        if info["mathErrors"]:
            problems.append(f"{rel}: {info['mathErrors']} MathJax errors")
        if rel not in ("genindex.html", "search.html") and not info["glossary"]:
            problems.append(f"{rel}: no link to the glossary")
    # every internal link resolves, anchors included
    ids = {rel: set(info["ids"]) for rel, info in results.items()}
    n_links = 0
    for rel, info in results.items():
        for href in set(info["links"]):
            if not href.startswith(server):
                continue
            n_links += 1
            parts = urlsplit(href)
            target = unquote(parts.path[len(urlsplit(server).path):]) or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (site / target).is_file():
                problems.append(f"{rel}: broken link {href}")
            elif parts.fragment and target in ids and unquote(parts.fragment) not in ids[target]:
                problems.append(f"{rel}: link to a missing anchor {href}")
    # math is rendered on the lectures that have formulas; figures are there
    n_math = sum(info["mathRendered"] for info in results.values())
    n_figs = {rel: sum(1 for i in info["images"] if i["inMain"]) for rel, info in results.items() if rel.startswith("lectures/")}
    assert n_math > 0, "no formula was typeset on the whole website"
    assert sum(n_figs.values()) > 0, "no lecture shows a figure: were the lectures executed with MPLBACKEND=Agg?"
    # the search finds the Shapley lecture
    current["url"] = "search.html?q=Shapley"
    page.goto(server + "search.html?q=Shapley", wait_until="load", timeout=PAGE_TIMEOUT_MS)
    # Sphinx adds the results one by one, then writes its summary ("Search finished, found N pages ...")
    page.wait_for_function("() => { const s = document.querySelector('.search-summary');"
                           " return s && s.textContent.trim().length > 0; }",
                           timeout=PAGE_TIMEOUT_MS)
    found = page.evaluate("() => Array.from(document.querySelectorAll('#search-results li a, ul.search li a')).map(a => a.href)")
    expect = "lectures/03_shapley.html" if (ROOT / "lectures" / "03_shapley.ipynb").is_file() and (site / "lectures/03_shapley.html").is_file() \
        else "assignments/a2_shapley/a2_shapley.html"
    if not any(expect in h for h in found):
        problems.append(f"search for 'Shapley' did not find {expect}: {found[:5]}")
    context.close()
    # screenshots to look at (a fresh browser context: the theme restores the sidebar's scroll position):
    # the home page, the lecture with the most figures, an assignment
    REPORTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server + "index.html", wait_until="load")
    page.evaluate(LOAD_CHECK)
    page.screenshot(path=str(REPORTS / "site_home.png"))
    lecture = max(n_figs, key=n_figs.get)
    page.goto(server + lecture, wait_until="load")
    page.evaluate(LOAD_CHECK)
    page.locator("main img").first.scroll_into_view_if_needed()
    page.evaluate("() => window.scrollBy(0, -120)")
    page.screenshot(path=str(REPORTS / "site_lecture.png"))
    assignment = next(p for p in pages if p.startswith("assignments/a1_") or p.startswith("assignments/a2_"))
    page.goto(server + assignment, wait_until="load")
    page.evaluate(LOAD_CHECK)
    page.screenshot(path=str(REPORTS / "site_assignment.png"))
    context.close()
    seconds = time.time() - t0
    _record(browser_seconds=round(seconds, 1), pages=len(pages), internal_links=n_links, formulas=n_math,
            lecture_figures=n_figs, screenshots={"home": "index.html", "lecture": lecture, "assignment": assignment})
    print(f"\nbrowser: {len(pages)} pages, {n_links} internal links, {n_math} formulas, "
          f"{sum(n_figs.values())} lecture figures in {seconds:.0f} s")
    assert not problems, f"{len(problems)} problem(s) in the browser:\n" + "\n".join(problems[:40])
    assert seconds <= MAX_BROWSER_S, f"the browser test took {seconds:.0f} s (budget {MAX_BROWSER_S} s)"
