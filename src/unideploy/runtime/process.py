"""Process-wide settings a Predictor applies before its runtime starts threads: glibc malloc arenas, OpenCV threads.

They change the whole process, not one predictor, so they live apart from it; each is idempotent.

Example:
    >>> set_malloc_arenas(1) in (True, False)
    True
"""

from __future__ import annotations

import sys

from unideploy.core.options import check_positive_int

__all__ = ["set_cv_threads", "set_malloc_arenas"]


def set_malloc_arenas(n: int) -> bool:
    """Limit glibc's malloc arenas (``mallopt(M_ARENA_MAX, n)``) for threads that have not allocated yet.

    Returns:
        False where there is no glibc (musl, macOS, Windows) and nothing was changed.

    Raises:
        OptionError: ``n`` is not a positive integer.
    """
    n = check_positive_int(n, "malloc_arenas")
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.mallopt(ctypes.c_int(-8), ctypes.c_int(n)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def set_cv_threads(n: int) -> None:
    """OpenCV's own worker-thread count (``cv2.setNumThreads``: 0 runs OpenCV's calls single-threaded, a negative
    value restores OpenCV's default)."""
    import cv2

    cv2.setNumThreads(int(n))
