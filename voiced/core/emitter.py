"""The effects an input produced, in order, and the ids of the client events sent."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from voiced import wire
from voiced.core.effects import Effect, Send

_SENT_MEMORY: Final = 256  # client events remembered to explain an `error` event


class Emitter:
    """Collects effects until the supervisor takes them; numbers the client events."""

    def __init__(self) -> None:
        self._effects: list[Effect] = []
        self._seq = 0
        self._sent: OrderedDict[str, str] = OrderedDict()

    def emit(self, effect: Effect) -> None:
        """Append one effect."""
        self._effects.append(effect)

    def eid(self) -> str:
        """A fresh client ``event_id``."""
        self._seq += 1
        return f"voiced_{self._seq}"

    def send(self, event: wire.ClientEvent, *, standby: bool = False) -> None:
        """Emit :class:`Send`, remembering what the event was (bounded)."""
        self._sent[event["event_id"]] = wire.describe(event)
        if len(self._sent) > _SENT_MEMORY:
            self._sent.popitem(last=False)
        self.emit(Send(event, standby))

    def about(self, event_id: str | None) -> str:
        """What the client event ``event_id`` was (for an ``error`` naming it), or ""."""
        return self._sent.get(event_id or "", "")

    def take(self) -> list[Effect]:
        """Return the effects produced since the last call, and forget them."""
        effects, self._effects = self._effects, []
        return effects
