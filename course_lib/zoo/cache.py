"""The one cache folder of the course, and checksums.

``COURSE_LIB_HOME`` (default ``~/.cache/course_lib``) holds everything fetched or derived.
On a hub an instructor fills it once and shares it read-only; then anything that must
be written goes to ``COURSE_LIB_USER_CACHE`` (default ``~/.cache/course_lib-user``).
"""
from __future__ import annotations

import hashlib
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
