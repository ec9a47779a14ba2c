"""OS-level thread names, so ``top -H -p <pid>`` shows which part of voiced is busy."""

from __future__ import annotations

import functools
import os
import sys
import threading
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


@functools.cache
def _pythonapi() -> Any:
    """CPython's C API through ctypes, or None where thread states cannot be kept."""
    if sys.implementation.name != "cpython" or not os.path.isdir("/proc/self/task"):
        return None  # pragma: no cover - the daemon runs on CPython on Linux
    import ctypes

    api = ctypes.pythonapi
    api.PyGILState_Ensure.restype = ctypes.c_int
    api.PyThreadState_Get.restype = ctypes.c_void_p
    api.PyThreadState_Clear.argtypes = [ctypes.c_void_p]
    api.PyThreadState_Delete.argtypes = [ctypes.c_void_p]
    return api


class CallbackThread:
    """What an audio callback calls first, on the thread PortAudio runs it on.

    :meth:`enter` names each new thread (a stream started again runs on a new one) and
    keeps the thread's Python thread state from one callback to the next.

    *Why keep it* (issue 21): PyAudio's callback wrapper takes the GIL with
    ``PyGILState_Ensure`` and gives it back with ``PyGILState_Release``. On a thread
    Python did not start, that creates a Python thread state for every callback and
    destroys it after, and the first frame on a new thread state maps a 16 kB frame
    stack that the release unmaps: an mmap, a page fault and a munmap per callback
    (``strace -f`` on a bare output stream: 321 mmap and 261 munmap for 251 callbacks).
    A bare 48 kHz output stream with a Python callback per 20 ms cost 0.39-0.53 % of a
    core that way and 0.27-0.32 % with the state kept, in the same run (a thread
    blocking in PyAudio's ``write`` for 100 ms at a time: 0.23-0.28 %). One
    ``PyGILState_Ensure`` more on the thread's first callback, never released there,
    keeps the state alive; PyAudio's own pairs then only take and give back the GIL.

    A thread PortAudio ends (the stream stopped or closed) cannot release it itself, so
    :meth:`release`, after the stop, clears and deletes the states of the threads that
    have ended (no longer in ``/proc/self/task``), from whichever thread calls it. A
    thread still running keeps its state until a later :meth:`release` finds it ended.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._local = threading.local()  # per thread state: set once it is kept
        self._lock = threading.Lock()
        self._kept: list[tuple[int, int]] = []  # (thread state, native thread id)
        self._last_native = 0  # where no state can be kept: the thread last named

    def enter(self) -> None:
        """On the callback's thread, first thing in each callback."""
        if getattr(self._local, "kept", False):
            return
        api = _pythonapi()
        if api is None:  # pragma: no cover - not CPython on Linux: only name it
            native = threading.get_native_id()
            if native != self._last_native:
                self._last_native = native
                name_this_thread(self.name)
            return
        name_this_thread(self.name)
        api.PyGILState_Ensure()  # one more than PyAudio's: the state outlives the call
        with self._lock:
            self._kept.append((api.PyThreadState_Get(), threading.get_native_id()))
        self._local.kept = True

    @property
    def kept(self) -> int:
        """Thread states kept now (tests: one per running stream, none after release)."""
        return len(self._kept)

    def release(self) -> None:
        """Free the states kept for threads that have ended.

        Called after a stream's stop or close (which joins its thread), on any other
        thread.
        """
        api = _pythonapi()
        if api is None:  # pragma: no cover - nothing was kept
            return
        with self._lock:
            ended = [k for k in self._kept if not os.path.exists(f"/proc/self/task/{k[1]}")]
            self._kept = [k for k in self._kept if k not in ended]
        for state, _native in ended:
            api.PyThreadState_Clear(state)
            api.PyThreadState_Delete(state)


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
