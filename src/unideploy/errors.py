"""Exception tree of unideploy.

Every error a user can cause (a bad path, a bad model, a bad flag, a missing runtime)
derives from :class:`UnideployError`; the CLI prints such errors as one line and exits 1.
Bugs are not user errors and are left to raise as they are::

    UnideployError
    ├── InputError              bad user input: paths, images, flags, values
    │   ├── SourceError         a source (file, folder, glob, video) that yields nothing usable
    │   └── ImageDecodeError    one image file that cannot be decoded
    ├── ModelError              a model file that is missing, unreadable or of an unknown layout
    │   └── SpecError           a model spec that is incomplete or contradicts the model
    └── BackendError            a runtime failed or was misused
        ├── BackendUnavailableError   the runtime is not installed (names the pip extra)
        └── DeviceError               the device / provider asked for does not exist here
"""

from __future__ import annotations


class UnideployError(Exception):
    """Root of every error a user can cause."""


class InputError(UnideployError, ValueError):
    """Bad user input: a path, an image, a flag or a value."""


class SourceError(InputError):
    """A source that yields no usable item (missing path, empty folder, unknown format)."""


class ImageDecodeError(InputError):
    """One image that cannot be read or decoded."""


class ModelError(UnideployError):
    """A model file that is missing, unreadable, or whose layout is not supported."""


class SpecError(ModelError):
    """A model spec that is incomplete or contradicts the model."""


class BackendError(UnideployError):
    """A runtime failed or was used against its contract."""


class BackendUnavailableError(BackendError, ImportError):
    """The runtime of a backend is not installed on this machine."""


class DeviceError(BackendError):
    """The device or execution provider asked for is not available."""
