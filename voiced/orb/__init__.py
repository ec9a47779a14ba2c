"""The orb: one LED interface, several drivers, patterns from a state → pattern table.

An :class:`Animator` renders the current state's pattern into N RGB pixels (floats 0-1)
at up to ``leds.fps`` frames per second on the event loop, and hands each *changed* frame
to a driver. Static patterns (solid, off) render once and then wait for the next state,
so an idle orb costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from voiced.config import Pattern
from voiced.wakeup import Wakeup

logger = logging.getLogger(__name__)

Pixel = tuple[float, float, float]


class OrbDriver(Protocol):
    """Shows one frame of pixels (RGB 0-1 each)."""

    pixels: int

    def show(self, frame: Sequence[Pixel]) -> None:
        """Display ``frame`` (len == pixels)."""

    def close(self) -> None:
        """Turn the LEDs off and release them."""


def render(pattern: Pattern, t: float, n: int) -> list[Pixel]:
    """The frame of ``pattern`` at ``t`` seconds into the state, for ``n`` pixels."""
    r, g, b = (c / 255 for c in pattern.color)
    phase = (t / pattern.period_s) % 1.0
    if pattern.effect == "off":
        level = 0.0
    elif pattern.effect == "solid":
        level = 1.0
    elif pattern.effect == "blink":
        level = 1.0 if phase < 0.5 else 0.0
    elif pattern.effect == "pulse":
        level = 0.15 + 0.85 * (0.5 - 0.5 * math.cos(2 * math.pi * phase))
    else:  # chase: one bright pixel and a short tail going round
        head = phase * n
        out = []
        for i in range(n):
            d = (head - i) % n
            lv = max(0.0, 1.0 - d / 3) if n > 1 else 1.0
            out.append((r * lv, g * lv, b * lv))
        return out
    return [(r * level, g * level, b * level)] * n


def is_static(pattern: Pattern) -> bool:
    """Whether the pattern never changes over time."""
    return pattern.effect in ("off", "solid")


class Animator:
    """Runs the orb: ``set_state`` from the loop; :meth:`run` is one task.

    A driver that raises is switched off with one ERROR line; the daemon goes on.
    """

    def __init__(self, driver: OrbDriver | None, patterns: dict[str, Pattern],
                 *, fps: int = 30) -> None:
        self.driver = driver
        self.patterns = dict(patterns)
        self.fps = min(30, max(1, fps))
        self.state = "starting"
        self._changed = False
        self._wakeup = Wakeup()
        self._last: list[Pixel] | None = None
        self._flash_until = 0.0
        self.frames_shown = 0

    def set_state(self, state: str) -> None:
        """Show ``state``'s pattern from the next frame on."""
        if state != self.state:
            self.state = state
            self._change()

    def acknowledge(self, seconds: float = 0.15) -> None:
        """A short white flash over the current pattern: "I felt that press".

        The press may change nothing else the user can see (the mic toggled while the
        device is still connecting), so the button always gets this answer.
        """
        self._flash_until = asyncio.get_running_loop().time() + seconds
        self._change()

    def set_patterns(self, patterns: dict[str, Pattern]) -> None:
        """Replace the pattern table (a config reload)."""
        self.patterns = dict(patterns)
        self._change()

    def _change(self) -> None:
        self._changed = True
        self._wakeup.set()

    async def _pause(self, seconds: float | None) -> None:
        """Until something changes, or ``seconds`` have passed (None: no limit)."""
        if not self._changed:
            await self._wakeup.wait(seconds)

    def _show(self, frame: list[Pixel]) -> None:
        if self.driver is None or frame == self._last:
            return
        try:
            self.driver.show(frame)
        except Exception as e:  # noqa: BLE001 - hardware must not take the daemon down
            logger.error("the orb failed and is switched off: %s", e)
            self.driver = None
            return
        self._last = frame
        self.frames_shown += 1

    async def run(self) -> None:
        """Animate until cancelled; turns the LEDs off at the end."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._changed = False
                pattern = self.patterns.get(self.state) or Pattern("off", (0, 0, 0))
                t0 = loop.time()
                n = self.driver.pixels if self.driver is not None else 1
                frame_no = 0
                while not self._changed:
                    flash = self._flash_until - loop.time()
                    if flash > 0:
                        self._show([(1.0, 1.0, 1.0)] * n)
                        await self._pause(flash)
                        break
                    self._show(render(pattern, loop.time() - t0, n))
                    if is_static(pattern) or self.driver is None:
                        await self._pause(None)
                        break
                    frame_no += 1
                    await self._pause(max(0.0, t0 + frame_no / self.fps - loop.time()))
        finally:
            self.close()

    def close(self) -> None:
        """Turn the LEDs off and release the driver."""
        if self.driver is not None:
            try:
                self.driver.close()
            except Exception as e:  # noqa: BLE001 - closing must not fail the shutdown
                logger.debug("closing the orb: %s", e)
            self.driver = None
