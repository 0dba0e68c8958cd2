"""The one cache folder of the course, and checksums.

``COURSE_LIB_HOME`` (default ``~/.cache/course_lib``) holds everything fetched or derived.
On a hub an instructor fills it once and shares it read-only; then anything that must
be written goes to ``COURSE_LIB_USER_CACHE`` (default ``~/.cache/course_lib-user``).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path


def home() -> Path:
    """The course cache folder (may be read-only)."""
    return Path(os.environ.get("COURSE_LIB_HOME", Path.home() / ".cache" / "course_lib")).expanduser()


def user_cache() -> Path:
    """A folder this user can always write to, for when ``home()`` is read-only."""
    return Path(os.environ.get("COURSE_LIB_USER_CACHE", Path.home() / ".cache" / "course_lib-user")).expanduser()


def writable(folder: Path) -> bool:
    """True if files can be created in ``folder`` (creating it if needed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def sha256(path: Path, chunk: int = 2**22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ChecksumError(RuntimeError):
    """A cached or shipped file does not have the checksum it must have."""


def verify(path: Path, expected: str, *, what: str, fix: str) -> None:
    """Raise :class:`ChecksumError` naming ``fix`` unless ``path`` has sha256 ``expected``."""
    got = sha256(path)
    if got != expected:
        raise ChecksumError(
            f"{what} at {path} is damaged or not the expected file (sha256 {got[:12]}..., expected {expected[:12]}...). "
            f"It was not used. {fix}"
        )


def pip_download_wheel(requirement: str, pattern: str, folder: str | Path, *, hint: str) -> Path:
    """Download one wheel (no dependencies) with this interpreter's pip into ``folder``; return its path.

    ``pattern`` is the glob its file name matches; ``hint`` ends the error message when the index is unreachable.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement, "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(folder).glob(pattern))
    if done.returncode != 0 or not wheels:
        raise ConnectionError(f"pip could not download {requirement}:\n{done.stderr.strip()[-800:]}\n{hint}")
    return wheels[0]


MANIFEST = "manifest.json"


def write_manifest(folder: Path, extra: dict | None = None, *, exclude: tuple[str, ...] = ()) -> dict:
    """Record the sha256 of every file in ``folder`` (at write time) in ``folder/manifest.json``,
    under ``"files"``, with ``extra`` entries beside it. Returns the manifest."""
    files = {f.name: sha256(f) for f in sorted(Path(folder).iterdir())
             if f.is_file() and f.name != MANIFEST and f.name not in exclude}
    manifest = dict(extra or {}, files=files)
    tmp = Path(folder) / f".{MANIFEST}.{os.getpid()}.part"  # readers never see half a manifest
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(Path(folder) / MANIFEST)
    return manifest


def folder_problem(folder: Path) -> str | None:
    """None if ``folder/manifest.json`` can be read and every file it lists is there with the sha256
    recorded for it; else what is wrong, in words. A manifest without ``"files"`` (written by an
    older course_lib) is a problem too: nothing but its age says the folder is whole."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise KeyError("files")
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} cannot be read or lists no checksums ({type(err).__name__}: {err})"
    for name, expected in files.items():
        f = Path(folder) / name
        if not f.is_file():
            return f"{f} is missing"
        if sha256(f) != expected:
            return f"{f} is damaged or truncated (its sha256 is not the one recorded when it was written)"
    return None


def file_problem(path: Path) -> str | None:
    """None if ``path`` has the sha256 recorded beside it in ``path.sha256``; else what is wrong."""
    side = Path(str(path) + ".sha256")
    if not Path(path).is_file():
        return f"{path} is missing"
    try:
        expected = side.read_text().split()[0]
    except (OSError, IndexError):
        return f"{side} (the checksum written with {Path(path).name}) is missing or empty"
    if sha256(path) != expected:
        return f"{path} is damaged or truncated (its sha256 is not the one recorded when it was written)"
    return None


def write_checksum(path: Path) -> None:
    """Record ``path``'s sha256 in ``path.sha256`` (after the file itself is complete)."""
    Path(str(path) + ".sha256").write_text(sha256(path) + "\n")
