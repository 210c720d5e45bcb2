"""Where unideploy keeps files between runs (compiled-model caches, the private rknn-toolkit2 venv).

``$UNIDEPLOY_CACHE`` if set, else ``$XDG_CACHE_HOME/unideploy``, else ``~/.cache/unideploy``.

Example:
    >>> import os
    >>> os.environ["UNIDEPLOY_CACHE"] = "/tmp/ud"
    >>> str(cache_dir("openvino"))
    '/tmp/ud/openvino'
    >>> del os.environ["UNIDEPLOY_CACHE"]
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """The unideploy cache folder, or ``parts`` below it (not created here)."""
    base = os.environ.get("UNIDEPLOY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "unideploy"
    )
    return Path(base, *parts)
