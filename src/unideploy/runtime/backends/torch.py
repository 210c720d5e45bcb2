"""PyTorch backend: Ultralytics ``.pt`` checkpoints, TorchScript files and ``torch.export`` programs.

Devices: ``cpu``, ``cuda`` / ``cuda:N``, and the vendor plug-in devices ``npu:N`` (``torch_npu``, Huawei
Ascend) and ``mlu:N`` (``torch_mlu``, Cambricon). A plug-in is imported only when its device is asked for.

The backend's jobs live in four modules beside this one (their public names are re-exported here):

* :mod:`~unideploy.runtime.backends.torch_device`: device strings and vendor plug-ins;
* :mod:`~unideploy.runtime.backends.torch_pickle`: file formats and the metadata of a checkpoint, read without
  unpickling anything (an inert pickle walker);
* :mod:`~unideploy.runtime.backends.torch_load`: safe loading (``weights_only`` with a module allowlist; full
  unpickling only with ``trust_pickle=True``, which warns);
* :mod:`~unideploy.runtime.backends.torch_session`: the session (pinned buffers, CUDA graphs, ``torch.compile``).

Example:
    >>> import unideploy
    >>> p = unideploy.load("yolov8n.pt", backend="torch", device="cpu", precision="fp32")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unideploy.core.errors import BackendUnavailableError, ModelError
from unideploy.runtime.backends.base import Backend
from unideploy.runtime.backends.torch_device import PLUGINS, available_devices, parse_device, resolve_device
from unideploy.runtime.backends.torch_load import (
    LoadedModel, UnsafeCheckpointWarning, load_checkpoint, load_torch_model,
)
from unideploy.runtime.backends.torch_pickle import file_format, read_torch_metadata
from unideploy.runtime.backends.torch_session import PRECISIONS, TorchOptions, TorchSession

__all__ = [
    "TORCH_SUFFIXES", "TorchBackend", "TorchOptions", "TorchSession", "LoadedModel", "UnsafeCheckpointWarning",
    "PLUGINS", "PRECISIONS", "available_devices", "parse_device", "resolve_device", "file_format",
    "read_torch_metadata", "load_checkpoint", "load_torch_model",
]

#: model file suffixes this backend opens
TORCH_SUFFIXES = (".pt", ".pth", ".torchscript", ".pt2", ".ts")


class TorchBackend(Backend):
    """PyTorch: Ultralytics ``.pt`` checkpoints, TorchScript, ``torch.export`` programs.

    Devices: ``cpu``, ``cuda[:N]``, ``npu[:N]`` (torch_npu), ``mlu[:N]`` (torch_mlu).

    Options:
        precision: "fp32" (default), "fp16" or "bf16" (``half=True`` is "fp16").
        trust_pickle: fully unpickle checkpoints the safe loader refuses (warns; runs code in the file).
        cuda_graph: capture and replay CUDA graphs per input shape on CUDA (default True).
        compile: wrap the model in ``torch.compile`` (``compile_mode`` picks the mode).
        imgsz: input size for the probe run that discovers the output layout (default: from the file, else 640).
        threads: CPU threads (``torch.set_num_threads``).
        fuse: fuse Conv+BatchNorm of Ultralytics models (default True).

    Example:
        >>> with TorchBackend.open("yolov8n.pt", "cpu") as s:  # doctest: +SKIP
        ...     outputs = s.run(np.zeros((1, 3, 640, 640), np.float32))
    """

    name = "torch"
    runtime_module = "torch"
    extra = "torch"
    suffixes = TORCH_SUFFIXES
    Options = TorchOptions

    @classmethod
    def read_metadata(cls, path: str | Path) -> dict[str, str]:
        """Checkpoint metadata in the form of Ultralytics' ONNX ``metadata_props``, read without unpickling anything
        (see :func:`read_torch_metadata`); works without torch installed."""
        return read_torch_metadata(path)

    @classmethod
    def require(cls) -> Any:
        if not cls.available():
            raise BackendUnavailableError(
                "backend 'torch' needs PyTorch, which is not installed; install the pinned build with: "
                "pip install torch==2.14.1 torchvision==0.29.1 (see docs/accelerators.md)"
            )
        return super().require()

    @classmethod
    def devices(cls) -> list[str]:
        cls.require()
        return available_devices()

    @classmethod
    def open(cls, path: str | Path, device: str | None = None, **options: Any) -> TorchSession:
        torch = cls.require()
        opts: TorchOptions = cls.parse_options(options)
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        tdev = resolve_device(device)
        if opts.threads:
            torch.set_num_threads(int(opts.threads))
        loaded = load_torch_model(path, trust_pickle=bool(opts.trust_pickle), fuse=opts.fuse)  # type: ignore[arg-type]
        session = TorchSession(path, str(tdev), loaded, tdev, opts)
        session.file_metadata = dict(loaded.meta)  # read while loading: the file is not walked twice
        return session
