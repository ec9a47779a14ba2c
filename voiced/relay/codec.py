"""Opus between a device and the relay: the relay's half.

Protocol: docs/architecture.md, "Opus"; the shared parts: ``voiced/audio/opus_stream.py``.

Per bridge, when the device offered Opus at the handshake and the relay took it:

- device → upstream: each binary frame is a payload of Opus packets, decoded here to a
  PCM16 ``input_audio_buffer.append`` (upstream only speaks PCM16). The device's
  ``input_audio_buffer.commit`` and ``.clear`` end its encoder's stream (after a final
  ``END`` payload for a commit): the decoder starts a new stream at the same point.
- upstream → device: the PCM16 of ``response.output_audio.delta`` is encoded into
  whole 20 ms packets, one Opus delta per upstream delta that filled a frame; the
  item's ``response.output_audio.done`` (or its ``response.done``, or the next item's
  first delta) flushes the rest in an ``END`` delta first. The ledger sees the upstream
  PCM before this, so ``audio_ms`` and every position stay in PCM samples.

Hostile payloads: framing errors are refused whole (an ``error`` event, counted against
the connection's refused-frame budget like any refused frame); bad packets are
concealed and counted; neither ends the connection by itself.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from voiced.audio import opus, opus_stream
from voiced.audio.opus_stream import AudioOffer, FramingError, StreamDecoder, StreamEncoder
from voiced.relay.ledger import encode, error_event

logger = logging.getLogger(__name__)

_DELTA: Final = "response.output_audio.delta"
_STREAM_ENDS: Final = frozenset({"response.output_audio.done", "response.done"})
_INPUT_BOUNDARIES: Final = frozenset({"input_audio_buffer.commit", "input_audio_buffer.clear"})


@functools.cache
def relay_pre_skip() -> int:
    """The delay of the relay's encoder (the same for every bridge)."""
    return StreamEncoder().pre_skip


def offer_from(headers: Mapping[str, str], *, enabled: bool = True
               ) -> tuple[AudioOffer | None, str | None]:
    """The device's usable offer, and the answer header's value (None: send none).

    No header: PCM16 and no answer (as a relay that predates Opus). A header this relay
    cannot take (another codec, rate, frame, a malformed value, no libopus here, or
    ``audio.opus: false`` in relay.yaml, ``enabled``): ``pcm16``, so the device knows it
    was heard and declined.
    """
    value = headers.get(opus_stream.HEADER)
    if value is None:
        return None, None
    offer = opus_stream.parse_header(value)
    if offer is None or not enabled or not opus.available():
        return None, opus_stream.PCM16
    return offer, AudioOffer(relay_pre_skip()).header()


class RelayCodec:
    """One bridge's decoder (device's microphone) and encoder (upstream's replies)."""

    def __init__(self, offer: AudioOffer) -> None:
        self.decoder = StreamDecoder(offer.pre_skip)
        self.encoder = StreamEncoder()
        self.bad_payloads = 0
        self._reply: dict[str, Any] | None = None  # the current reply's last delta
        self._seq = 0

    @property
    def bad_packets(self) -> int:
        """Device packets concealed so far."""
        return self.decoder.bad_packets

    # ---------------------------------------------------------------- device side

    def from_device(self, payload: bytes) -> tuple[str | None, str | None]:
        """(PCM16 append for upstream or None, ``error`` event for the device or None)."""
        try:
            pcm = self.decoder.feed(payload)
        except FramingError as e:
            self.bad_payloads += 1
            self._seq += 1
            return None, error_event("invalid_audio", f"Invalid Opus audio: {e}.", None,
                                     self._seq)
        if not pcm:
            return None, None  # the codec delay of a stream's first packet
        return encode({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(pcm).decode("ascii")}), None

    def after_device_event(self, upstream_text: str) -> None:
        """Note a device event that went upstream: a commit or clear ends its stream."""
        if "input_audio_buffer.c" not in upstream_text:  # cheap: appends never match
            return
        with_type = json.loads(upstream_text)
        if with_type.get("type") in _INPUT_BOUNDARIES:
            self.decoder.reset()

    # ---------------------------------------------------------------- upstream side

    def to_device(self, t: str, frame: str, d: dict[str, Any]) -> list[str]:
        """What the device gets for one upstream event (already through the ledger)."""
        if t == _DELTA:
            return self._delta(d)
        if t in _STREAM_ENDS and self._reply is not None:
            return [*self._end(), frame]
        return [frame]

    def _delta(self, d: dict[str, Any]) -> list[str]:
        delta, item = d.get("delta"), d.get("item_id")
        try:
            pcm = base64.b64decode(delta if isinstance(delta, str) else "", validate=True)
        except binascii.Error:
            pcm = b""
        if not pcm or len(pcm) % 2 or not isinstance(item, str):
            return []  # nothing playable (the device's parser would drop it too)
        out: list[str] = []
        if self._reply is not None and self._reply.get("item_id") != item:
            out += self._end()  # a new reply without the last one's done
        self._reply = d
        for payload in self.encoder.push(pcm):
            out.append(self._as_delta(d, payload))
        return out

    def _end(self) -> list[str]:
        last, self._reply = self._reply, None
        payload = self.encoder.end()
        if last is None or payload is None:
            return []
        eid = last.get("event_id")
        return [self._as_delta({**last, "event_id": f"{eid}_end" if isinstance(eid, str)
                                else "relay_audio_end"}, payload)]

    @staticmethod
    def _as_delta(d: dict[str, Any], payload: bytes) -> str:
        return encode({**d, "delta": base64.b64encode(payload).decode("ascii")})
