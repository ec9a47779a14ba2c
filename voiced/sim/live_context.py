"""Context the client appends to a simulated Live session, and client delegations.

Appends (instructions, thinking, commentary) are placed on the timeline 600 ms after
they come (``session.<kind>.appended``); commentary is spoken once placed, instructions
join the session's. A delegation's automatic acknowledgement is due
``acknowledgement_delay_ms`` of timeline after it, unless commentary or thinking came
first. An append over 500 tokens (four characters each) is refused, as is one during a
fixture; what is not placed when the session closes is reported by the connection.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from voiced.sim.live_track import BYTES_PER_MS, grid_floor
from voiced.sim.responses import ClientMistake, new_id

if TYPE_CHECKING:
    from voiced.sim.live import LiveSession

PLACE_AFTER_MS = 600
"""Timeline between a context append and its placement (the service: 0.6-1 s)."""
MAX_APPEND_TOKENS = 500


def _tokens(text: str) -> int:
    """A token estimate (about four characters each), for the 500-token append cap."""
    return math.ceil(len(text) / 4)


@dataclass
class Placement:
    """A context append waiting for the timeline to place it."""

    due: int  # timeline bytes
    kind: str
    event_id: str | None
    content: str
    delegation_id: str | None


class Context:
    """The appends waiting to be placed, the delegations, the acknowledgements due."""

    def __init__(self, live: LiveSession) -> None:
        self.live = live
        self.placements: list[Placement] = []
        # client delegations commentary may answer (the newest 64; repeats continue one)
        self.delegations: deque[str] = deque(maxlen=64)
        self.acks: list[tuple[int, str]] = []  # (timeline due, delegation id)

    def place_due(self) -> int:
        """Place the appends due at the timeline; the number of acknowledgements due."""
        timeline = self.live.timeline
        for p in [p for p in self.placements if p.due <= timeline]:
            self.placements.remove(p)
            self._place(p)
        due = [a for a in self.acks if a[0] <= timeline]
        for a in due:
            self.acks.remove(a)
        return len(due)

    def unplaced(self) -> list[Placement]:
        """The session closes: the appends never placed (forgotten here)."""
        out, self.placements = self.placements, []
        return out

    def delegated(self, at_ms: int, target: str, response_id: str | None = None) -> str:
        """Send ``session.delegation.created``; its acknowledgement is due after the delay."""
        delegation_id = new_id("item")
        body: dict[str, Any] = {"id": delegation_id, "type": "delegation", "target": target}
        if response_id is not None:
            body["response_id"] = response_id
        self.live.emit({"type": "session.delegation.created",
                        "offset_ms": grid_floor(at_ms), "delegation": body})
        delay = self.live.delegation.get("acknowledgement_delay_ms") or 0
        self.acks.append((self.live.timeline + int(delay) * BYTES_PER_MS, delegation_id))
        return delegation_id

    def delegate_to_client(self, at_ms: int) -> None:
        """The model delegates to the app (commentary may answer it)."""
        self.delegations.append(self.delegated(at_ms, "client"))

    def on_append(self, ev: dict[str, Any], event_id: str | None) -> None:
        """Context appends (instructions, thinking, commentary): placed 600 ms of timeline later."""
        kind = ev["type"].split(".")[1]
        content = ev.get("content")
        if not isinstance(content, str):
            raise ClientMistake.missing("content")
        if "delegation_id" not in ev:
            raise ClientMistake.missing("delegation_id")
        if self.live.track.fixture_playing():
            raise ClientMistake("fixture_active", "Context appends are rejected while an "
                                "audio fixture plays.")
        if _tokens(content) > MAX_APPEND_TOKENS:
            raise ClientMistake("invalid_value", "Context append text must not exceed 500 "
                                "tokens.", "content")
        did = ev["delegation_id"]
        if did is not None:
            if self.live.delegation["type"] == "responses":
                raise ClientMistake("invalid_value", "A delegation_id is not accepted with "
                                    "Responses delegation.", "delegation_id")
            if did not in self.delegations:
                raise ClientMistake("invalid_value", f"Unknown delegation_id '{did}'.",
                                    "delegation_id")
        if kind in ("commentary", "thinking"):
            self.acks.clear()  # cancels every pending automatic acknowledgement
        self.placements.append(Placement(self.live.timeline + PLACE_AFTER_MS * BYTES_PER_MS,
                                           kind, event_id, content, did))

    def _place(self, p: Placement) -> None:
        at = grid_floor(self.live.input_ms)
        self.live.emit({"type": f"session.{p.kind}.appended", "start_ms": at, "end_ms": at,
                   **({"client_event_id": p.event_id} if p.event_id is not None else {})})
        if p.kind == "commentary":
            self.live.say_when_heard(p.content)
        elif p.kind == "instructions" and self.live.session is not None:
            self.live.session["instructions"] = f"{self.live.session['instructions']}\n{p.content}"
