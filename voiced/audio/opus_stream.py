"""Opus on the device-relay link: offer and answer, framing, sample-exact streams.

Decoded samples line up exactly with the PCM16 that was sent.

Shared by both ends (the relay's ``voiced/relay/codec.py``, the device's
``voiced/opus_link.py``); the protocol is in docs/architecture.md, "Opus".

**Negotiation.** The device sends the request header ``Voiced-Audio: opus; rate=24000;
frame_ms=20; pre_skip=156`` (``pre_skip``: its encoder's delay, in samples). A relay
that takes it answers the same header on its 101 with *its own* encoder's ``pre_skip``;
one that declines answers ``Voiced-Audio: pcm16``; a relay that predates Opus answers
nothing. Anything but a valid ``opus`` answer means PCM16, as today.

**Payload** (one binary WebSocket frame device → relay, or the base64 ``delta`` of a
``response.output_audio.delta`` relay → device)::

    flags:u8  [keep:u16 when flags & END]  (length:u16 packet)*    big-endian

one to :data:`MAX_PACKETS` packets of 1..:data:`MAX_PACKET_BYTES` bytes, each exactly
one 20 ms frame. ``END`` closes the stream: ``keep`` is how many of this payload's
decoded samples are real (the rest is the padding that flushed the codec delay); the
receiver drops them and resets its decoder. A new stream's first ``pre_skip`` decoded
samples are dropped too, so decoded sample *k* is sent sample *k*.

A malformed payload (its framing) is refused whole; a packet that libopus refuses or
that is not one frame is counted and replaced by one frame of concealment, so the
positions of everything after it stay exact.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

from voiced.audio.opus import OpusDecoder, OpusEncoder, OpusError, packet_samples
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

HEADER: Final = "Voiced-Audio"
PCM16: Final = "pcm16"
FRAME_MS: Final = 20
FRAME: Final = SAMPLE_RATE * FRAME_MS // 1000
"""Samples per packet (480)."""
MAX_PRE_SKIP: Final = 2 * FRAME
"""A codec delay over 40 ms is not one libopus would report: refused."""
MAX_PACKET_BYTES: Final = 1275
"""The largest Opus frame (RFC 6716 §3.4)."""
MAX_PACKETS: Final = 50
"""Packets per payload: one second of audio."""
END: Final = 0x01
_HEADER_MAX: Final = 200
_PARAM: Final = re.compile(r"^([a-z_]{1,16})=([0-9]{1,6})$")


class FramingError(OpusError):
    """A payload whose framing is wrong (refused whole; its packets are not decoded)."""


# ---------------------------------------------------------------- negotiation


@dataclass(frozen=True, slots=True)
class AudioOffer:
    """``opus; rate=24000; frame_ms=20; pre_skip=N``: the one form either side accepts."""

    pre_skip: int

    def header(self) -> str:
        """The header's value."""
        return f"opus; rate={SAMPLE_RATE}; frame_ms={FRAME_MS}; pre_skip={self.pre_skip}"


def parse_header(value: str | None) -> AudioOffer | None:
    """The offer or answer in a ``Voiced-Audio`` header; None for anything else.

    Hostile input: bounded length, exact parameter names and ranges, each once.
    """
    if value is None or len(value) > _HEADER_MAX:
        return None
    codec, *parts = (p.strip() for p in value.split(";"))
    if codec.lower() != "opus":
        return None
    params: dict[str, int] = {}
    for part in parts:
        m = _PARAM.match(part)
        if m is None or m[1] in params:
            return None
        params[m[1]] = int(m[2])
    if set(params) != {"rate", "frame_ms", "pre_skip"} or params["rate"] != SAMPLE_RATE \
            or params["frame_ms"] != FRAME_MS or params["pre_skip"] > MAX_PRE_SKIP:
        return None
    return AudioOffer(pre_skip=params["pre_skip"])


# ---------------------------------------------------------------- framing


def pack(packets: list[bytes], keep: int | None = None) -> bytes:
    """One payload of ``packets`` (``keep``: this payload ends the stream)."""
    head = struct.pack(">BH", END, keep) if keep is not None else b"\x00"
    return head + b"".join(struct.pack(">H", len(p)) + p for p in packets)


def unpack(payload: bytes) -> tuple[list[bytes], int | None]:
    """The packets of a payload and its ``keep`` (None: the stream goes on).

    Raises:
        FramingError: what is wrong, in words (no bytes quoted).
    """
    if not payload:
        raise FramingError("an empty audio payload")
    flags = payload[0]
    if flags & ~END:
        raise FramingError(f"unknown audio payload flags 0x{flags:02x}")
    pos, keep = 1, None
    if flags & END:
        if len(payload) < 3:
            raise FramingError("an audio payload cut short in its keep count")
        keep = int.from_bytes(payload[1:3], "big")
        pos = 3
    packets: list[bytes] = []
    while pos < len(payload):
        if len(packets) == MAX_PACKETS:
            raise FramingError(f"more than {MAX_PACKETS} packets in one audio payload")
        if pos + 2 > len(payload):
            raise FramingError("an audio payload cut short in a packet length")
        n = int.from_bytes(payload[pos:pos + 2], "big")
        if not 1 <= n <= MAX_PACKET_BYTES:
            raise FramingError(f"an Opus packet of {n} bytes (1..{MAX_PACKET_BYTES})")
        if pos + 2 + n > len(payload):
            raise FramingError("an audio payload cut short inside a packet")
        packets.append(payload[pos + 2:pos + 2 + n])
        pos += 2 + n
    if not packets and keep is None:
        raise FramingError("an audio payload without packets")
    if keep is not None and keep > len(packets) * FRAME:
        raise FramingError(f"keep {keep} is more than its {len(packets)} packet(s) hold")
    return packets, keep


# ---------------------------------------------------------------- streams


class StreamEncoder:
    """PCM16 in any lengths → payloads of whole 20 ms packets; :meth:`end` flushes."""

    def __init__(self, *, bitrate: int = 24_000, complexity: int = 5) -> None:
        self._enc = OpusEncoder(frame_ms=FRAME_MS, bitrate=bitrate, complexity=complexity)
        self.pre_skip: int = self._enc.lookahead
        self._pending = b""
        self._real = 0  # samples pushed in this stream
        self._sent = 0  # packets sent in this stream

    @property
    def open(self) -> bool:
        """Whether a stream has audio not yet ended."""
        return self._real > 0

    @property
    def in_flight(self) -> int:
        """Samples pushed that a decoder cannot have given out yet (until more or END)."""
        return self._real - max(0, self._sent * FRAME - self.pre_skip)

    def push(self, pcm: bytes) -> list[bytes]:
        """The payloads for ``pcm``'s whole frames so far (none while under a frame).

        At most :data:`MAX_PACKETS` packets a payload.
        """
        if len(pcm) % BYTES_PER_SAMPLE:
            raise OpusError(f"PCM16 of {len(pcm)} bytes is not whole samples")
        self._real += len(pcm) // BYTES_PER_SAMPLE
        data = self._pending + pcm
        step = self._enc.frame_bytes
        whole = len(data) // step * step
        self._pending = data[whole:]
        packets = [self._enc.encode(data[i:i + step]) for i in range(0, whole, step)]
        self._sent += len(packets)
        return [pack(packets[i:i + MAX_PACKETS]) for i in range(0, len(packets), MAX_PACKETS)]

    def end(self) -> bytes | None:
        """The stream's last payload (its real tail and the codec delay), then a reset.

        None when nothing was pushed since the last end.
        """
        if not self.open:
            self.reset()
            return None
        keep = self.in_flight
        packets = self._enc.finish(self._pending)
        self.reset()
        return pack(packets, keep)

    def reset(self) -> None:
        """Drop what is pending; the next push starts a new stream."""
        self._enc.reset()
        self._pending = b""
        self._real = self._sent = 0


class StreamDecoder:
    """Payloads → PCM16, the sender's delay dropped, bad packets concealed and counted."""

    def __init__(self, pre_skip: int) -> None:
        self._dec = OpusDecoder(trim=pre_skip)
        self.bad_packets = 0
        """Packets libopus refused or that were not one 20 ms frame (concealed)."""

    def feed(self, payload: bytes) -> bytes:
        """The PCM16 a payload carries.

        Raises:
            FramingError: the payload's framing is wrong (nothing decoded).
        """
        packets, keep = unpack(payload)
        pcm = b"".join(self._one(p) for p in packets)
        if keep is not None:
            pcm = pcm[:keep * BYTES_PER_SAMPLE]
            self._dec.reset()
        return pcm

    def _one(self, packet: bytes) -> bytes:
        if packet_samples(packet) == FRAME:
            try:
                return self._dec.decode(packet)
            except OpusError:
                pass
        # refused, or not one 20 ms frame: one frame of concealment keeps positions
        self.bad_packets += 1
        return self._dec.conceal(FRAME)

    def reset(self) -> None:
        """A new stream (the sender reset its encoder)."""
        self._dec.reset()
