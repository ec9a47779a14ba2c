"""Opus for the link between a device and the relay: libopus (Debian's ``libopus0``) via ctypes.

24 kHz mono (the wire rate: no resampling), 20 ms frames by default, the VOIP
application (speech-tuned, with packet-loss concealment and in-band FEC). Why ctypes
and not a binding (docs/architecture.md, "Opus"): the bindings on PyPI wrap the same
system library through ctypes themselves (opuslib, last released in 2018; opuslib-next,
a young fork), and the dozen functions used here are libopus's stable 1.x ABI.

The codec delays audio by ``OpusEncoder.lookahead`` samples (6.5 ms at 24 kHz with
libopus 1.3): decoded sample ``k + lookahead`` is input sample ``k``. ``OpusDecoder``
can drop that many samples at the start of a stream (``trim``) and ``OpusEncoder.finish``
pushes the last real samples out, so a stream's decoded audio lines up with what was
sent, sample for sample, and played positions stay exact through the codec.

Packets from a peer are hostile input: ``decode`` refuses empty, oversized and
malformed packets with ``OpusError`` (libopus checks every packet before decoding it);
a lost packet is asked for explicitly (``conceal``).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Final

from voiced.audio.native import declare, load_library, loads
from voiced.errors import VoicedError
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

APPLICATION_VOIP: Final = 2048
_SET_BITRATE: Final = 4002
_SET_COMPLEXITY: Final = 4010
_SET_INBAND_FEC: Final = 4012
_SET_PACKET_LOSS_PERC: Final = 4014
_SET_DTX: Final = 4016
_SET_SIGNAL: Final = 4024
_SIGNAL_VOICE: Final = 3001
_GET_LOOKAHEAD: Final = 4027
_RESET_STATE: Final = 4028

FRAME_MS: Final = (10, 20, 40, 60)
MAX_PACKET: Final = 1500
"""Bytes; an Opus frame is at most 1275, and a device sends one frame a packet."""
MAX_DECODED: Final = SAMPLE_RATE * 120 // 1000
"""Samples in the longest packet Opus allows (120 ms)."""


class OpusError(VoicedError, ValueError):
    """libopus refused: a malformed packet, a bad setting (the message says which)."""


@functools.cache
def _lib() -> Any:
    """Load libopus and declare its prototypes; MissingLibraryError names the package."""
    lib = load_library("libopus.so.0", "opus", package="libopus0",
                       feature="Opus audio between device and relay")
    vp, cint, i32, buf = ctypes.c_void_p, ctypes.c_int, ctypes.c_int32, ctypes.c_char_p
    declare(lib, {
        "opus_get_version_string": (buf, []),
        "opus_strerror": (buf, [cint]),
        "opus_encoder_create": (vp, [i32, cint, cint, ctypes.POINTER(cint)]),
        "opus_encoder_destroy": (None, [vp]),
        "opus_encode": (i32, [vp, buf, cint, vp, i32]),
        "opus_decoder_create": (vp, [i32, cint, ctypes.POINTER(cint)]),
        "opus_decoder_destroy": (None, [vp]),
        "opus_decode": (cint, [vp, buf, i32, vp, cint, cint]),
        "opus_packet_get_nb_samples": (cint, [buf, i32, i32]),
        # variadic: every argument passed as a ctypes object (Linux's arm64, armhf and
        # x86-64 ABIs pass variadic ints and pointers as fixed ones)
        "opus_encoder_ctl": (cint, None),
        "opus_decoder_ctl": (cint, None),
    })
    return lib


def _error(code: int) -> str:
    return str(_lib().opus_strerror(code).decode())


def version() -> str:
    """The library's version string, e.g. ``libopus 1.3.1``."""
    return str(_lib().opus_get_version_string().decode())


def available() -> bool:
    """Whether libopus can be loaded here."""
    return loads(_lib)


def packet_samples(packet: bytes) -> int:
    """Samples at 24 kHz a packet decodes to (its TOC and frame count), -1 if malformed."""
    if not packet or len(packet) > MAX_PACKET:
        return -1
    n = _lib().opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE)
    return int(n) if n > 0 else -1


class OpusEncoder:
    """24 kHz mono PCM16 frames in, one Opus packet per frame out.

    Args:
        frame_ms: 10, 20 (default), 40 or 60.
        bitrate: bits per second (6000..128000); 24 kbit/s is wideband-plus speech.
        complexity: 0..10, CPU against quality (5: a Pi Zero 2 W keeps up easily).
        fec: in-band forward error correction (costs bitrate; lets the decoder rebuild a
            lost frame from the next packet), tuned for ``loss_percent``.
        dtx: discontinuous transmission (near-empty packets in silence).
    """

    def __init__(self, *, frame_ms: int = 20, bitrate: int = 24_000, complexity: int = 5,
                 fec: bool = False, loss_percent: int = 0, dtx: bool = False) -> None:
        if frame_ms not in FRAME_MS:
            raise OpusError(f"Opus frame_ms must be one of {FRAME_MS}, not {frame_ms}")
        if not 6000 <= bitrate <= 128_000:
            raise OpusError(f"Opus bitrate must be 6000..128000 bit/s, not {bitrate}")
        if not 0 <= complexity <= 10 or not 0 <= loss_percent <= 100:
            raise OpusError("Opus complexity must be 0..10 and loss_percent 0..100")
        lib = self._lib = _lib()
        self.frame = SAMPLE_RATE * frame_ms // 1000
        self.frame_bytes = self.frame * BYTES_PER_SAMPLE
        err = ctypes.c_int(0)
        self._st = lib.opus_encoder_create(SAMPLE_RATE, 1, APPLICATION_VOIP,
                                           ctypes.byref(err))
        if not self._st or err.value:
            raise OpusError(f"opus_encoder_create: {_error(err.value)}")
        for request, value in ((_SET_BITRATE, bitrate), (_SET_COMPLEXITY, complexity),
                               (_SET_INBAND_FEC, int(fec)),
                               (_SET_PACKET_LOSS_PERC, loss_percent),
                               (_SET_DTX, int(dtx)), (_SET_SIGNAL, _SIGNAL_VOICE)):
            self._ctl(request, ctypes.c_int(value))
        out = ctypes.c_int(0)
        self._ctl(_GET_LOOKAHEAD, ctypes.byref(out))
        self.lookahead: int = out.value
        """Samples the decoded stream lags the input by (the codec's own delay)."""
        self._packet = ctypes.create_string_buffer(MAX_PACKET)
        self.samples_in = 0  # real samples encoded (finish() pads with silence)

    def _ctl(self, request: int, arg: Any) -> None:
        # variadic: no argtypes, so the handle must be wrapped (a bare int would be
        # passed as a 32-bit C int and truncate the pointer)
        rc = self._lib.opus_encoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(request), arg)
        if rc < 0:
            raise OpusError(f"opus_encoder_ctl({request}): {_error(rc)}")

    def encode(self, pcm: bytes) -> bytes:
        """One frame of 24 kHz PCM16 mono (exactly ``frame_bytes``) as one packet."""
        if len(pcm) != self.frame_bytes:
            raise OpusError(f"an Opus frame is {self.frame_bytes} bytes of PCM16 "
                            f"({self.frame} samples), not {len(pcm)}")
        n = self._lib.opus_encode(self._st, pcm, self.frame, self._packet, MAX_PACKET)
        if n < 0:
            raise OpusError(f"opus_encode: {_error(n)}")
        self.samples_in += self.frame
        return self._packet.raw[:n]

    def finish(self, tail: bytes = b"") -> list[bytes]:
        """The stream's last packets, so every real sample comes out of the decoder.

        ``tail`` (under a frame) is padded with silence, then as much silence follows as
        the codec's delay takes.
        """
        if len(tail) >= self.frame_bytes or len(tail) % BYTES_PER_SAMPLE:
            raise OpusError(f"the tail must be whole samples, under {self.frame_bytes} bytes")
        real = self.samples_in + len(tail) // BYTES_PER_SAMPLE
        packets = []
        pending = tail
        while self.samples_in < real + self.lookahead:
            frame = pending + bytes(self.frame_bytes - len(pending))
            pending = b""
            packets.append(self.encode(frame))
        self.samples_in = real
        return packets

    def reset(self) -> None:
        """Start a new stream (the decoder on the other side must be reset too)."""
        self._ctl(_RESET_STATE, None)
        self.samples_in = 0

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_encoder_destroy(st)


class OpusDecoder:
    """Opus packets in, 24 kHz mono PCM16 out.

    Args:
        trim: samples to drop at the start of the stream: the sender's
            ``OpusEncoder.lookahead``, so decoded sample ``k`` is sent sample ``k``.
    """

    def __init__(self, *, trim: int = 0) -> None:
        if not 0 <= trim <= MAX_DECODED:
            raise OpusError(f"trim must be 0..{MAX_DECODED} samples, not {trim}")
        lib = self._lib = _lib()
        err = ctypes.c_int(0)
        self._st = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(err))
        if not self._st or err.value:
            raise OpusError(f"opus_decoder_create: {_error(err.value)}")
        self._pcm = ctypes.create_string_buffer(MAX_DECODED * BYTES_PER_SAMPLE)
        self._trim = self._to_trim = trim
        self.last_samples = SAMPLE_RATE * 20 // 1000  # what a lost packet conceals
        self.samples_out = 0

    def decode(self, packet: bytes) -> bytes:
        """One packet's audio (its frame length: 10-120 ms).

        Raises:
            OpusError: empty (a loss is ``conceal()``), oversized or malformed.
        """
        if not packet:
            raise OpusError("empty Opus packet (a lost packet is conceal(), not b'')")
        if len(packet) > MAX_PACKET:
            raise OpusError(f"Opus packet of {len(packet)} bytes (at most {MAX_PACKET})")
        n = self._lib.opus_packet_get_nb_samples(packet, len(packet), SAMPLE_RATE)
        if n < 0:
            raise OpusError(f"malformed Opus packet: {_error(n)}")
        if n > MAX_DECODED:
            raise OpusError(f"Opus packet of {n} samples (at most {MAX_DECODED})")
        return self._run(packet, MAX_DECODED, fec=False)

    def conceal(self, samples: int | None = None) -> bytes:
        """Audio in place of a lost packet (packet-loss concealment).

        ``samples`` long (default: as long as the last packet), a multiple of 2.5 ms.
        """
        n = self.last_samples if samples is None else samples
        if n <= 0 or n > MAX_DECODED or n % (SAMPLE_RATE // 400):
            raise OpusError(f"can only conceal 2.5 ms multiples up to 120 ms, not {n}")
        return self._run(None, n, fec=False)

    def recover(self, next_packet: bytes) -> bytes:
        """The lost packet's audio, rebuilt from FEC data in the packet after it.

        Concealment if the sender had ``fec`` off. Decode ``next_packet`` itself
        afterwards as usual.
        """
        if not next_packet or len(next_packet) > MAX_PACKET:
            raise OpusError("recover() needs the (non-empty) packet after the lost one")
        if self._lib.opus_packet_get_nb_samples(next_packet, len(next_packet),
                                                SAMPLE_RATE) < 0:
            raise OpusError("malformed Opus packet")
        return self._run(next_packet, self.last_samples, fec=True)

    def _run(self, packet: bytes | None, frame: int, *, fec: bool) -> bytes:
        n = self._lib.opus_decode(self._st, packet, len(packet) if packet else 0,
                                  self._pcm, frame, int(fec))
        if n < 0:
            raise OpusError(f"malformed Opus packet: {_error(n)}")
        if not fec:
            self.last_samples = n
        out = self._pcm.raw[:n * BYTES_PER_SAMPLE]
        if self._to_trim:
            drop = min(self._to_trim, n)
            self._to_trim -= drop
            out = out[drop * BYTES_PER_SAMPLE:]
        self.samples_out += len(out) // BYTES_PER_SAMPLE
        return out

    def reset(self) -> None:
        """Start a new stream (trimming the codec delay again)."""
        rc = self._lib.opus_decoder_ctl(ctypes.c_void_p(self._st), ctypes.c_int(_RESET_STATE))
        if rc < 0:
            raise OpusError(f"opus_decoder_ctl: {_error(rc)}")
        self._to_trim = self._trim
        self.samples_out = 0

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_decoder_destroy(st)
