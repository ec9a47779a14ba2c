"""Loading a distribution's C library through ctypes, with an error that says what to install.

The optional audio features (echo cancellation, Opus) use libraries Debian and Raspberry
Pi OS ship for every architecture (libspeexdsp1, libopus0), so no wheel has to exist for
armhf. They are loaded only when the feature is used: a device without the package runs
everything else, and a device configured for the feature fails with a sentence naming
the package instead of a traceback from ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any

from voiced.errors import VoicedError


class MissingLibraryError(VoicedError, OSError):
    """A C library an optional feature needs is not installed; the message names the package.

    Not an ``AudioDeviceError``: waiting for it to come back will not help.
    """


def load_library(soname: str, name: str, *, package: str, feature: str) -> ctypes.CDLL:
    """Load ``soname``, else whatever ``ctypes.util.find_library(name)`` finds.

    ``soname`` is the versioned file name: the ABI the caller was written against.

    Raises:
        MissingLibraryError: neither loads; says ``sudo apt install <package>``.
    """
    # find_library runs ldconfig (and gcc): only when the usual name is not there
    for candidate in (soname, None):
        candidate = candidate or ctypes.util.find_library(name)
        if candidate:
            try:
                return ctypes.CDLL(candidate)
            except OSError:
                continue
    raise MissingLibraryError(f"{soname} is not installed (sudo apt install {package}); "
                              f"voiced needs it for {feature}")


def declare(lib: ctypes.CDLL, prototypes: dict[str, tuple[Any, list[Any] | None]]) -> None:
    """Set ``restype`` and ``argtypes`` for each ``name: (restype, argtypes)``.

    ``argtypes`` None leaves a variadic function's arguments undeclared: each must then
    be passed as a ctypes object (a bare Python int goes as a 32-bit C int).
    """
    for name, (restype, argtypes) in prototypes.items():
        fn = getattr(lib, name)
        fn.restype = restype
        if argtypes is not None:
            fn.argtypes = argtypes


def loads(loader: Callable[[], object]) -> bool:
    """Whether ``loader`` (a module's cached library loader) finds its library here."""
    try:
        loader()
    except OSError:
        return False
    return True
