"""Audio in and out: the seams (``AudioSource``/``AudioSink``) and their backends.

Everything that crosses these seams is PCM16 LE mono at 24 kHz (``wire.SAMPLE_RATE``);
backends convert from and to whatever the device or file has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol, runtime_checkable

KEEP_PLAYED_COUNTS: Final = 8
"""Sinks keep each item's played count across underruns (an item that ran dry while the
network fell behind, then resumed, is still one item) for this many of the newest items;
older ones are long over."""


def make_room_for_count(counts: dict[str, int]) -> None:
    """Before a new item's count goes in: drop the oldest beyond KEEP_PLAYED_COUNTS."""
    while len(counts) >= KEEP_PLAYED_COUNTS:
        del counts[next(iter(counts))]


class AudioSource(Protocol):
    """A microphone: yields fixed-size frames of 24 kHz mono PCM16."""

    async def start(self) -> None:
        """Open the device; raises ``AudioDeviceError`` when it cannot."""

    async def read(self) -> bytes:
        """Wait for and return the next frame."""

    def mic_opened(self) -> None:
        """The user switched the mic on (a file source may start its WAV here)."""

    def set_capturing(self, on: bool) -> None:
        """Run the device (True) or stop it, open, while nothing needs the mic (False).

        Never blocks. While stopped, :meth:`read` waits and no silence counts as a
        fault; a device that cannot start again makes :meth:`read` raise
        ``AudioDeviceError``.
        """

    async def aclose(self) -> None:
        """Close the device; safe to call twice."""


@runtime_checkable
class PushSource(Protocol):
    """A source that can give each frame to a listener on the loop as it arrives.

    While ``listener`` is set, frames go to it instead of into the queue :meth:`read`
    returns from (frames already queued come out of :meth:`read` first, and later ones
    queue behind them, so the order holds); :meth:`read` still raises the source's faults.
    """

    listener: Callable[[bytes], None] | None


class AudioSink(Protocol):
    """A speaker with a queue, which knows how much of each item it has really played."""

    async def start(self) -> None:
        """Open the device; raises ``AudioDeviceError`` when it cannot."""

    def set_drained_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the event loop whenever queued audio has all been played."""

    def play(self, pcm: bytes, item_id: str) -> int:
        """Queue 24 kHz mono PCM16 belonging to ``item_id``; never blocks.

        Returns the bytes of ``pcm`` queued: fewer (down to 0) when the queue holds
        ``audio.max_queued_s`` already, the bound that keeps a server streaming without
        end from filling memory. The caller decides what a refusal means.
        """

    @property
    def queued_s(self) -> float:
        """Seconds of audio queued and not yet handed to the device."""

    def stop(self) -> Mapping[str, int]:
        """Drop everything queued at once; return samples played per unfinished item.

        Counted from the item's first sample: underruns in between do not reset it.
        """

    def check(self) -> None:
        """Raise ``AudioDeviceError`` if the device has failed since it was opened."""

    async def aclose(self) -> None:
        """Close the device; safe to call twice."""
