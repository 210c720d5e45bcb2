"""``unideploy.ray``: the Ray integration under the name the docs use; see :mod:`unideploy.apps.distributed`.

Inside this package every ``import ray`` is absolute, so this module never shadows the real ``ray`` package
(it would only if ``src/unideploy`` itself were put on ``sys.path``, which nothing does).

Example:
    >>> from unideploy.ray import predict  # doctest: +SKIP
    >>> results = predict("model.onnx", "images/", concurrency=2)  # doctest: +SKIP
"""

from __future__ import annotations

from unideploy.apps.distributed import *  # noqa: F401,F403
from unideploy.apps.distributed import __all__  # noqa: F401
