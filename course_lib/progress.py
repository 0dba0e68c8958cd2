"""Progress bars: the bottom layer every other module may import (it imports nothing from course_lib).

A bar is switched off while nbgrader grades (a test cell that writes to stderr scores zero),
when ``$COURSE_LIB_NO_PROGRESS`` is set, and when ``enabled`` is False.
"""
from __future__ import annotations

import os
from typing import Iterable, TypeVar

__all__ = ["progress_bar", "progress_enabled"]

T = TypeVar("T")


def progress_enabled() -> bool:
    """False while nbgrader grades or when ``$COURSE_LIB_NO_PROGRESS`` is set."""
    return not (os.environ.get("NBGRADER_EXECUTION") or os.environ.get("COURSE_LIB_NO_PROGRESS"))


def progress_bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True) -> Iterable[T]:
    """``tqdm`` over ``iterable`` (the notebook widget in Jupyter, text elsewhere), or the
    iterable itself when bars are off (see :func:`progress_enabled`) or ``enabled`` is False."""
    if not enabled or not progress_enabled():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)
