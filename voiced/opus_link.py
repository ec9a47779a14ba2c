"""Opus between the device and a relay: the device's half.

Protocol: docs/architecture.md, "Opus" (shared parts: ``voiced/audio/opus_stream.py``).
With ``realtime.relay.audio_codec: opus`` the device offers Opus at the handshake
(:func:`offer_headers`); :func:`negotiated` reads the relay's answer and gives the link
a :class:`LinkCodec`, or None for PCM16 (a relay that declined, or one that predates
Opus and answered nothing). The :class:`~voiced.link.Link` then passes what it sends through
:meth:`LinkCodec.outgoing` and what it receives through :meth:`LinkCodec.incoming`;
everything else (the core, played positions, truncation, the rollover) keeps counting
PCM16 samples, because decoded sample *k* is upstream's sample *k*.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from typing import Final

from websockets.asyncio.client import ClientConnection

from voiced import guard, wire
from voiced.audio import opus
from voiced.audio.opus_stream import (
    HEADER,
    AudioOffer,
    FramingError,
    StreamDecoder,
    StreamEncoder,
    parse_header,
)
from voiced.config import RealtimeSettings

logger = logging.getLogger(__name__)

CODECS: Final = ("pcm16", "opus")
_DELTA: Final = "response.output_audio.delta"


@functools.cache
def _pre_skip() -> int:
    return StreamEncoder().pre_skip


def wanted(rt: RealtimeSettings) -> bool:
    """Whether this connection should offer Opus (a relay, set to, libopus here)."""
    if rt.relay is None or rt.relay.audio_codec != "opus":
        return False
    if not opus.available():
        if guard.should_log("opus: no libopus") is not None:
            logger.warning("realtime.relay.audio_codec is opus but libopus0 is not "
                           "installed: sending PCM16")
        return False
    return True


def offer_headers(rt: RealtimeSettings) -> dict[str, str]:
    """Extra handshake headers: the Opus offer, or none."""
    return {HEADER: AudioOffer(_pre_skip()).header()} if wanted(rt) else {}


def negotiated(ws: ClientConnection) -> LinkCodec | None:
    """The link's codec after the handshake: None means PCM16, as without a relay.

    Decided by what this handshake offered, not by the settings now (a reload between
    the offer and here must not leave the two ends in different codecs).
    """
    if ws.request is None or HEADER not in ws.request.headers:
        return None
    raw = ws.response.headers.get(HEADER) if ws.response is not None else None
    answer = parse_header(raw)
    if answer is None:
        logger.info("the relay %s: sending PCM16", "declined Opus" if raw is not None
                    else "did not answer the Opus offer (an older relay)")
        return None
    logger.info("the relay took Opus (its codec delay: %d samples)", answer.pre_skip)
    return LinkCodec(answer)


class LinkCodec:
    """One connection's encoder (microphone) and decoder (reply audio)."""

    def __init__(self, answer: AudioOffer) -> None:
        self.encoder = StreamEncoder()
        self._pre_skip = answer.pre_skip
        self._decoder = StreamDecoder(answer.pre_skip)
        self._item = ""
        self.bad_payloads = 0

    @property
    def bad_packets(self) -> int:
        """Reply packets concealed on this connection's current item."""
        return self._decoder.bad_packets

    def outgoing(self, event: wire.ClientEvent) -> list[wire.ClientEvent | bytes]:
        """What to send for one client event: JSON events, and binary Opus payloads."""
        t = event.get("type")
        if t == "input_audio_buffer.append":
            return list(self.encoder.push(base64.b64decode(str(event.get("audio", "")))))
        if t == "input_audio_buffer.commit":
            end = self.encoder.end()  # the last real samples, then the commit
            return [end, event] if end is not None else [event]
        if t == "input_audio_buffer.clear":
            self.encoder.reset()
        return [event]

    def flush(self) -> list[bytes]:
        """The microphone stream's END (its last samples and the codec delay), if open."""
        end = self.encoder.end()
        return [end] if end is not None else []

    def incoming(self, frame: str | bytes) -> str | bytes:
        """A received frame, an Opus reply delta turned back into today's PCM16 one."""
        if not isinstance(frame, str) or "output_audio.delta" not in frame:
            return frame  # cheap: base64 never holds a dot
        try:
            d = json.loads(frame)
        except (ValueError, RecursionError):
            return frame  # the parser reports it
        if not isinstance(d, dict) or d.get("type") != _DELTA:
            return frame
        item = d.get("item_id")
        if isinstance(item, str) and item != self._item:
            self._item = item
            self._decoder = StreamDecoder(self._pre_skip)
        try:
            pcm = self._decoder.feed(base64.b64decode(str(d.get("delta", "")), validate=True))
        except (binascii.Error, FramingError) as e:
            self.bad_payloads += 1
            if guard.should_log("opus: bad reply payload") is not None:
                logger.warning("dropped reply audio the relay sent: %s (%d so far)",
                               guard.printable(e, 120), self.bad_payloads)
            pcm = b""
        d["delta"] = base64.b64encode(pcm).decode("ascii")
        return json.dumps(d, separators=(",", ":"))
