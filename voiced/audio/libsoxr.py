"""libsoxr, the SoX resampler, bound through ctypes for PCM16 in and out.

Why not the python-soxr package: it takes only numpy arrays, and importing numpy costs
the daemon 15 MB of RSS and 170 ms of start-up here (well over a second on a Pi Zero 2
W) for nothing else it needs (docs/architecture.md, "Dependencies"). The library doing
the work is the same libsoxr (Debian's ``libsoxr0``); this module binds the seven functions
of its stable 0.1 C API that the daemon uses.

At equal rates libsoxr only converts and scales, which gives the speaker volume a gain in
C, rounded to the nearest sample value and clipped (``Resampler(r, r, gain=...)``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from typing import Any

from voiced.errors import AudioDeviceError

_INT16_I = 3  # SOXR_INT16_I: interleaved 16-bit samples
_NO_DITHER = 8  # SOXR_NO_DITHER: speech at 16 bits needs none, and output stays exact
QUALITY = {"QQ": 0, "LQ": 1, "MQ": 2, "HQ": 4, "VHQ": 6}  # soxr.h recipes


class _IoSpec(ctypes.Structure):
    _fields_ = [("itype", ctypes.c_int), ("otype", ctypes.c_int), ("scale", ctypes.c_double),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


class _QualitySpec(ctypes.Structure):
    _fields_ = [("precision", ctypes.c_double), ("phase_response", ctypes.c_double),
                ("passband_end", ctypes.c_double), ("stopband_begin", ctypes.c_double),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


class _RuntimeSpec(ctypes.Structure):
    _fields_ = [("log2_min_dft_size", ctypes.c_uint), ("log2_large_dft_size", ctypes.c_uint),
                ("coef_size_kbytes", ctypes.c_uint), ("num_threads", ctypes.c_uint),
                ("e", ctypes.c_void_p), ("flags", ctypes.c_ulong)]


_size_p = ctypes.POINTER(ctypes.c_size_t)


@functools.cache
def _lib() -> Any:
    """Load libsoxr and declare its prototypes; AudioDeviceError when it is not installed."""
    lib = None
    for name in ("libsoxr.so.0", None):  # find_library runs ldconfig: only as a fallback
        name = name or ctypes.util.find_library("soxr")
        if name:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
    if lib is None:
        raise AudioDeviceError("libsoxr is not installed (sudo apt install libsoxr0); "
                               "voiced needs it to resample audio to and from 24 kHz")
    lib.soxr_version.restype = ctypes.c_char_p
    lib.soxr_quality_spec.restype = _QualitySpec
    lib.soxr_quality_spec.argtypes = [ctypes.c_ulong, ctypes.c_ulong]
    lib.soxr_runtime_spec.restype = _RuntimeSpec
    lib.soxr_runtime_spec.argtypes = [ctypes.c_uint]
    lib.soxr_create.restype = ctypes.c_void_p
    lib.soxr_create.argtypes = [ctypes.c_double, ctypes.c_double, ctypes.c_uint,
                                ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(_IoSpec),
                                ctypes.POINTER(_QualitySpec), ctypes.POINTER(_RuntimeSpec)]
    lib.soxr_process.restype = ctypes.c_char_p  # NULL on success, else the error
    lib.soxr_process.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, _size_p,
                                 ctypes.c_void_p, ctypes.c_size_t, _size_p]
    lib.soxr_clear.restype = ctypes.c_char_p
    lib.soxr_clear.argtypes = [ctypes.c_void_p]
    lib.soxr_delete.restype = None
    lib.soxr_delete.argtypes = [ctypes.c_void_p]
    return lib


def _check(error: bytes | None) -> None:
    """Raise the error libsoxr returned (it returns NULL on success)."""
    if error:
        raise ValueError(f"libsoxr: {error.decode()}")


def version() -> str:
    """The library's version string, e.g. ``libsoxr-0.1.3``."""
    return str(_lib().soxr_version().decode())


class Resampler:
    """A streaming resampler for interleaved PCM16.

    Filter state carries across chunks, so a signal converted chunk by chunk equals the
    signal converted at once.

    Args:
        in_rate / out_rate: sample rates in Hz (equal rates: gain only, nothing held back
            once flushed).
        channels: interleaved channel count, the same in and out.
        gain: linear amplitude factor applied in the same pass (clipped to 16 bits).
        quality: a soxr recipe name, ``QQ`` to ``VHQ``.

    One instance belongs to one thread: ctypes releases the GIL while libsoxr runs.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1, *, gain: float = 1.0,
                 quality: str = "LQ") -> None:
        if quality not in QUALITY:
            raise ValueError(f"unknown soxr quality {quality!r} (one of {', '.join(QUALITY)})")
        lib = _lib()
        self._lib = lib
        self._ratio = out_rate / in_rate
        self._frame = 2 * channels
        error = ctypes.c_char_p()
        io = _IoSpec(_INT16_I, _INT16_I, gain, None, _NO_DITHER)
        q = lib.soxr_quality_spec(QUALITY[quality], 0)
        runtime = lib.soxr_runtime_spec(1)  # one thread: a frame is far too small to split
        self._handle = lib.soxr_create(in_rate, out_rate, channels, ctypes.byref(error),
                                       ctypes.byref(io), ctypes.byref(q), ctypes.byref(runtime))
        if not self._handle:
            raise ValueError(f"libsoxr refused {in_rate} -> {out_rate} Hz, {channels} ch: "
                             f"{(error.value or b'?').decode()}")
        self._out = ctypes.create_string_buffer(0)
        self._idone = ctypes.c_size_t()
        self._odone = ctypes.c_size_t()
        self._flushed = False

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        """Resample one chunk; ``last=True`` also flushes what the filter holds back.

        A trailing partial sample frame (an odd byte, half a stereo pair) is ignored.

        Raises:
            ValueError: input after the last chunk without ``clear()`` (libsoxr itself
                would write through a null pointer).
        """
        frames = len(pcm) // self._frame
        if self._flushed and frames:
            raise ValueError("audio after the last chunk: clear() the resampler first")
        self._flushed = self._flushed or last
        room = math.ceil(frames * self._ratio) + 64  # plus what a flush may release
        if len(self._out) < room * self._frame:
            self._out = ctypes.create_string_buffer(room * self._frame)
        out: list[bytes] = []
        data = pcm
        self._odone.value = 0
        while frames:
            self._call(data, frames, room, out)
            if not self._idone.value and self._odone.value < room:
                raise ValueError("libsoxr took no input")  # never seen; better than a hang
            frames -= self._idone.value
            data = data[self._idone.value * self._frame:]
        while self._odone.value == room:  # the output buffer filled up: more is waiting
            self._call(b"", 0, room, out)
        while last:  # end of input: drain what the filter holds back
            self._call(None, 0, room, out)
            last = self._odone.value == room
        return b"".join(out)

    def _call(self, data: bytes | None, frames: int, room: int, out: list[bytes]) -> None:
        _check(self._lib.soxr_process(self._handle, data, frames, ctypes.byref(self._idone),
                                      self._out, room, ctypes.byref(self._odone)))
        if self._odone.value:
            out.append(ctypes.string_at(self._out, self._odone.value * self._frame))

    def clear(self) -> None:
        """Forget all history and held-back audio; ready for a fresh signal."""
        _check(self._lib.soxr_clear(self._handle))
        self._flushed = False

    def __del__(self) -> None:
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.soxr_delete(handle)
