"""Errors a user can act on: each carries one sentence that the CLIs print instead of a traceback."""

from __future__ import annotations

from collections.abc import Mapping


class EdgeError(Exception):
    """Base class; ``str(err)`` is the one sentence shown to the user.

    A sentence that tells the user to set an option names it by its keyword between backticks (as in
    "pass `public_key`") and lists it in ``option``; a CLI spells it as its own flag (``--key``) through
    :meth:`spelled`, so the library never names one command's flags.
    """

    exit_code = 2

    def __init__(self, *args: object, option: str | tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.options: tuple[str, ...] = (option,) if isinstance(option, str) else tuple(option)

    def spelled(self, names: Mapping[str, str]) -> str:
        """The sentence with each of its options written as ``names`` spells it (option → flag); an option
        ``names`` lacks keeps its keyword."""
        text = str(self)
        for option in self.options:
            if option in names:
                text = text.replace(f"`{option}`", names[option])
        return text


class BundleError(EdgeError):
    """A model bundle is missing, malformed, or a file in it does not match its recorded hash."""


class BackendUnavailable(EdgeError):
    """The requested backend cannot run here (library not importable, no GPU)."""


class EngineBuildError(EdgeError):
    """Building an engine from a bundle failed; the cache is left as it was."""


class EngineLoadTransient(EngineBuildError):
    """Loading a good engine failed for a reason outside the engine (out of GPU memory, no CUDA stream, GPU not
    reachable): the cache keeps the entry instead of quarantining it and rebuilding (which would fail alike)."""


class InferenceError(EdgeError):
    """Running a loaded engine failed (a CUDA or TensorRT call reported an error); the service answers 500."""


class CacheError(EdgeError):
    """The engine cache directory cannot be used (not writable, out of space)."""


class InputError(EdgeError):
    """Inputs do not match what the model expects (names, shapes, dtypes)."""


class RequestError(EdgeError):
    """A request the service refuses, with its HTTP status and one sentence (the ROS 2 bridge sees it too)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class DeviceError(EdgeError):
    """A device tool or file needed for the request is absent or unreadable."""
