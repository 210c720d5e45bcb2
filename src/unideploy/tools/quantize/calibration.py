"""Calibration images for post-training quantization, preprocessed by the model's own adapter.

The tensors come from :meth:`Predictor.preprocess` (the same letterbox, colour order, scaling and layout as
``predict``), so calibration sees exactly what the deployed model will see. Files that cannot be decoded
are skipped and reported; a folder with no usable image is an error.

Example:
    >>> import unideploy
    >>> with unideploy.load("model.onnx") as predictor:  # doctest: +SKIP
    ...     calib = CalibrationSet("calib_images/", predictor, samples=100)
    ...     print(len(calib), calib.skipped)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from unideploy.core.errors import ImageDecodeError, InputError, SourceError
from unideploy.core.sources import list_images, read_image


def pick_evenly(items: list[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all of them when there are no more than ``n``).

    Example:
        >>> pick_evenly(list(range(10)), 3)
        [0, 4, 9]
    """
    if n >= len(items):
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


class CalibrationSet:
    """Up to ``samples`` images of ``source`` (folder, glob or file), checked once, preprocessed on demand.

    Args:
        source: image folder, glob pattern or a list of image paths.
        predictor: an open :class:`~unideploy.runtime.predictor.Predictor` of the float model (its ``preprocess`` is used).
        samples: images to use at most, picked evenly over the sorted file list.

    Raises:
        InputError: ``samples`` is not a positive integer.
        SourceError: the source has no images, or none of the picked ones can be decoded.

    Attributes:
        paths: the usable image paths, in order.
        skipped: (file name, reason) of every picked image that could not be decoded.
    """

    def __init__(self, source: str | os.PathLike | list, predictor: Any, samples: int = 300) -> None:
        if int(samples) < 1:
            raise InputError(f"--samples must be a positive integer, got {samples}")
        files = [Path(p) for p in source] if isinstance(source, (list, tuple)) else list_images(source)
        if not files:
            raise SourceError(f"{source}: expected calibration images, found none")
        picked = pick_evenly(files, int(samples))
        self.predictor = predictor
        self.input_name = predictor.session.inputs[0].name
        self.batch = int(predictor.fixed_batch or 1)
        self.paths: list[Path] = []
        self.skipped: list[tuple[str, str]] = []
        for p in picked:
            try:
                read_image(p)
            except ImageDecodeError as e:
                self.skipped.append((p.name, str(e)))
                continue
            self.paths.append(p)
        if not self.paths:
            first = f"; first: {self.skipped[0][1]}" if self.skipped else ""
            raise SourceError(f"{source}: none of the {len(picked)} calibration images could be decoded{first}")
        self.source = str(source) if not isinstance(source, (list, tuple)) else f"{len(files)} files"

    def __len__(self) -> int:
        """Number of model inputs (batches) the set yields."""
        return -(-len(self.paths) // self.batch)

    def tensor(self, index: int) -> np.ndarray:
        """Model input number ``index``: (batch, C, H, W) (a fixed batch is filled by repeating the last image)."""
        chunk = self.paths[index * self.batch : (index + 1) * self.batch]
        xs = [self.predictor.preprocess(read_image(p))[0] for p in chunk]
        while len(xs) < self.batch:
            xs.append(xs[-1])
        return np.ascontiguousarray(np.stack(xs))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.tensor(i)

    def feeds(self, index: int) -> dict[str, np.ndarray]:
        """``{input name: tensor}`` for model input number ``index``."""
        return {self.input_name: self.tensor(index)}

    def nncf_dataset(self, as_dict: bool = False) -> Any:
        """An ``nncf.Dataset`` over the set (tensors for OpenVINO, ``{name: tensor}`` when ``as_dict``)."""
        import nncf

        return nncf.Dataset(list(range(len(self))), self.feeds if as_dict else self.tensor)

    def ort_reader(self) -> Any:
        """An ``onnxruntime.quantization.CalibrationDataReader`` over the set."""
        from onnxruntime.quantization import CalibrationDataReader

        calib = self

        class _Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self._i >= len(calib):
                    return None
                self._i += 1
                return calib.feeds(self._i - 1)

            def rewind(self) -> None:
                self._i = 0

            def __len__(self) -> int:
                return len(calib)

        return _Reader()
