"""OS-level thread names, so ``top -H -p <pid>`` shows which part of voiced is busy."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None)


def name_this_thread(name: str) -> None:
    """Give the calling OS thread a name ``top -H`` and ``/proc`` show (Linux, best effort).

    PortAudio's callback threads are otherwise indistinguishable from the interpreter's.
    """
    try:
        _libc().prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
