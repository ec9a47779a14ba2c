"""The one physical button (gpiozero), reporting gestures to the event loop.

gpiozero calls back on its own threads; every callback crosses into the loop here, in one
place, with ``call_soon_threadsafe``. Gestures:

- toggle mode: a press shorter than ``hold_time_s`` is ``press`` (on release, so it can be
  told from a long press); holding for ``hold_time_s`` is ``long-press`` (at once).
- push_to_talk mode: ``talk-start`` on press, ``talk-end`` on release.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from voiced.config import ButtonSettings

logger = logging.getLogger(__name__)

Gesture = str  # "press" | "long-press" | "talk-start" | "talk-end"


class ButtonInput:
    """Wraps a gpiozero ``Button``; ``on_gesture`` is called on the event loop.

    Args:
        settings: ``button``.
        on_gesture: called with the gesture name, on the loop.
        pin_factory: gpiozero pin factory (None: gpiozero's default, or
            ``GPIOZERO_PIN_FACTORY``).
        clock: monotonic seconds, for the debounce window (tests set the edges' times).
    """

    def __init__(self, settings: ButtonSettings, on_gesture: Callable[[Gesture], None],
                 pin_factory: Any = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.on_gesture = on_gesture
        self.pin_factory = pin_factory
        self._clock = clock
        self._button: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held = False
        self._down = False
        self._last_edge = -1e9
        self._lock = threading.Lock()  # gpiozero's threads and the loop both get here

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Claim the pin.

        Raises:
            gpiozero errors (the caller maps them to a message naming ``button.pin``).
        """
        from gpiozero import Button

        self._loop = loop
        s = self.settings
        pin: int | str = int(s.pin) if s.pin.isdigit() else s.pin
        self._button = Button(pin, pull_up=s.pull == "up",
                              bounce_time=s.bounce_time_s or None,
                              hold_time=s.hold_time_s, pin_factory=self.pin_factory)
        self._button.when_pressed = self._pressed
        self._button.when_released = self._released
        self._button.when_held = self._held_cb
        logger.info("button on pin %s (%s)", s.pin, s.mode)

    # NOTE: the gpiozero callbacks below run on gpiozero's threads
    def _pressed(self) -> None:
        self._edge(True)

    def _released(self) -> None:
        self._edge(False)

    def _held_cb(self) -> None:
        with self._lock:
            if self.settings.mode == "toggle" and self._down:
                self._held = True
                self._emit("long-press")

    def _edge(self, down: bool) -> None:
        """Debounce in software as well, so a worn switch never double-fires.

        Not every pin library honours ``bounce_time`` (gpiozero's mock pins ignore it).
        An edge after a quiet ``bounce_time_s`` counts at once; edges inside it are
        noise, and once they stop the pin's real level decides (on the loop).
        """
        now = self._clock()
        with self._lock:
            quiet = now - self._last_edge >= self.settings.bounce_time_s
            self._last_edge = now
        if quiet:
            self._apply(down)
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, self.settings.bounce_time_s,
                                      self._settle)

    def _settle(self) -> None:
        """On the loop, a bounce window after a noisy edge: follow the pin's level."""
        if self._clock() - self._last_edge < self.settings.bounce_time_s:
            return  # still bouncing: the latest edge scheduled its own check
        button = self._button
        if button is not None:
            self._apply(bool(button.is_pressed))

    def _apply(self, down: bool) -> None:
        with self._lock:
            if down == self._down:
                return
            self._down = down
            ptt = self.settings.mode == "push_to_talk"
            if down:
                self._held = False
                if ptt:
                    self._emit("talk-start")
            else:
                if ptt:
                    self._emit("talk-end")
                elif not self._held:
                    self._emit("press")
                self._held = False

    def _emit(self, gesture: Gesture) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.on_gesture, gesture)

    def close(self) -> None:
        """Release the pin."""
        if self._button is not None:
            self._button.close()
            self._button = None
