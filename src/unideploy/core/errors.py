"""Exception tree of unideploy.

Every error a user can cause (a bad path, a bad model, a bad flag, a missing runtime)
derives from :class:`UnideployError`; the CLI prints such errors as one line and exits 1.
Bugs are not user errors and are left to raise as they are::

    UnideployError
    ├── InputError              bad user input: paths, images, flags, values
    │   ├── OptionError         one option (argument or flag) out of range or unknown; names both spellings
    │   ├── SourceError         a source (file, folder, glob, video) that yields nothing usable
    │   ├── ImageDecodeError    one image file that cannot be decoded
    │   ├── GraphError          a multi-model graph description that cannot work
    │   └── RequestError        a bad HTTP request to the server (carries the HTTP status)
    ├── ModelError              a model file that is missing, unreadable or of an unknown layout
    │   ├── SpecError           a model spec that is incomplete or contradicts the model
    │   └── UnsafeModelError    a model that would make the runtime read or run what it should not
    ├── AccuracyDropError       a quantized model loses more accuracy than allowed
    ├── OutputError             an output that could not be written (disk full, no permission, file too large)
    └── BackendError            a runtime failed or was misused
        ├── BackendUnavailableError   the runtime is not installed (names the pip extra)
        └── DeviceError               the device / provider asked for does not exist here
"""

from __future__ import annotations

__all__ = [
    "UnideployError", "InputError", "OptionError", "SourceError", "ImageDecodeError", "GraphError", "PipelineError",
    "RequestError", "ModelError", "SpecError", "UnsafeModelError", "AccuracyDropError", "BackendError",
    "BackendUnavailableError", "DeviceError", "OutputError",
]


class UnideployError(Exception):
    """Root of every error a user can cause."""


class InputError(UnideployError, ValueError):
    """Bad user input: a path, an image, a flag or a value."""


class OptionError(InputError):
    """One option out of range, of the wrong type, or unknown.

    The message names the option as the caller spelt it: the Python argument (``conf``) by default, the command-line
    flag (``--conf``) once the CLI has called :meth:`as_flag`.
    """

    def __init__(self, option: str, problem: str, *, flag: bool = False) -> None:
        self.option = option
        self.problem = problem
        self.flag = flag
        super().__init__(f"{self.label} {problem}")

    @property
    def label(self) -> str:
        return "--" + self.option.replace("_", "-") if self.flag else self.option

    def as_flag(self) -> OptionError:
        """The same error, naming the command-line flag."""
        return OptionError(self.option, self.problem, flag=True)


class SourceError(InputError):
    """A source that yields no usable item (missing path, empty folder, unknown format)."""


class ImageDecodeError(InputError):
    """One image that cannot be read or decoded."""


class GraphError(InputError):
    """A multi-model graph description that cannot work: unknown stage or op, bad parameter, types that do not connect."""


#: the name this error had before multi-model "pipelines" became graphs
PipelineError = GraphError


class RequestError(InputError):
    """A bad HTTP request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ModelError(UnideployError):
    """A model file that is missing, unreadable, or whose layout is not supported."""


class SpecError(ModelError):
    """A model spec that is incomplete or contradicts the model."""


class UnsafeModelError(ModelError):
    """A model file that would make the runtime read or run something outside what it should."""


class AccuracyDropError(UnideployError):
    """The quantized model loses more accuracy than ``max_drop`` allows (and no model was kept)."""


class OutputError(UnideployError, OSError):
    """An output file or folder that could not be written: the message names the path and the cause
    (``No space left on device``, ``Permission denied``, ``File too large``); ``errno`` is the system's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno  # type: ignore[misc]

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BackendError(UnideployError):
    """A runtime failed or was used against its contract."""


class BackendUnavailableError(BackendError, ImportError):
    """The runtime of a backend is not installed on this machine."""


class DeviceError(BackendError):
    """The device or execution provider asked for is not available."""
