"""OS-level thread names, so ``top -H -p <pid>`` shows which part of voiced is busy."""

from __future__ import annotations

import functools
from collections.abc import Callable
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


def thread_namer(name: str) -> Callable[[], None]:
    """A function for a callback to call on a thread someone else starts.

    PortAudio starts one per stream; the thread is named on the first call only.
    """
    named: list[bool] = []

    def name_once() -> None:
        if not named:
            name_this_thread(name)
            named.append(True)

    return name_once


MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's per-thread malloc arenas (``mallopt(M_ARENA_MAX)``); False elsewhere.

    Every thread that allocates may get an arena of its own, and memory freed into one is
    rarely given back. PortAudio starts new callback threads, and PortAudio itself is
    started on executor threads, each time a device is reopened: in the pyaudio soak with
    sound-card outages RSS rose 2.6 MB in 10 min with glibc's default (8 per core) and
    0.8 MB, flat after 5 min, with 2 (bench/soak.py --audio pyaudio, same seed).
    """
    try:
        return bool(_libc().mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
