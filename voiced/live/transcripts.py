"""GPT-Live transcripts: timestamped fragments assembled into user and assistant segments.

The service sends bare fragments (``session.input_transcript.delta`` for the user,
``session.output_transcript.delta`` for the assistant) with ``start_ms``/``end_ms`` on the
session's timeline, no item ids and no "completed" event; the two streams overlap. The
SDK's ``TranscriptGrouper`` is a display helper (it drops short backchannels, keeps its
own wall clock and needs the SDK at run time). This assembler is the device's own, pure
and lossless, and closes segments on the timeline:

- one open segment per role; a fragment joins its role's open segment unless it starts
  more than ``quiet_ms`` after that segment's end, which closes it and opens a new one;
- a fragment that starts at or after the other role's open segment's end closes that
  segment (the turn changed hands); one that starts before it overlaps it (a backchannel,
  or the user talking over the assistant, which marks the assistant segment ``barged``);
- a fragment also closes its own role's open segment when the other role has begun a
  segment since that one began (someone else spoke in between: a new turn);
- a segment also closes when the timeline passes both its end and the point where its
  newest fragment arrived by ``quiet_ms`` (the timeline is what the device has sent,
  which a server behind on a loaded machine or a slow link has not heard yet), and
  every open segment when the session ends;
- a fragment seen before (the same ``event_id``) is ignored; text is joined raw and made
  valid Unicode once (a surrogate pair cut across two fragments survives), and each
  segment keeps at most ``max_bytes`` of UTF-8.

It also keeps the newest fragments, so the core can ask which words the user said
between two points of the timeline (the words a delegation is about).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Literal

from voiced.wire import utf8_len, valid_text

Role = Literal["user", "assistant"]
_SEEN: Final = 512  # fragment ids remembered for dedupe
_RECENT: Final = 256  # fragments kept for user_words()


@dataclass(slots=True)
class Segment:
    """One speaker's utterance on the session timeline."""

    role: Role
    start_ms: int
    end_ms: int
    parts: list[str] = field(default_factory=list)
    size: int = 0  # UTF-8 bytes of parts
    cut: bool = False  # text beyond max_bytes was dropped
    barged: bool = False  # assistant: the user started talking before it ended
    # the timeline when its newest fragment arrived: the quiet time counts from there
    # too, so a server running behind the uplink does not split an utterance
    arrived_ms: int = 0

    @property
    def text(self) -> str:
        """The words, joined, valid Unicode, without surrounding space."""
        return valid_text("".join(self.parts)).strip()


class Assembler:
    """Fragments in, closed segments out (see the module's rules)."""

    def __init__(self, *, quiet_ms: int = 2000, max_bytes: int = 65_536) -> None:
        self.quiet_ms = quiet_ms
        self.max_bytes = max_bytes
        self.open: dict[Role, Segment] = {}
        self.fragments_cut = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[tuple[Role, int, int, str]] = deque(maxlen=_RECENT)
        self._began: dict[Role, int] = {}  # where each role's newest segment began

    def add(self, role: Role, event_id: str, delta: str, start_ms: int,
            end_ms: int, *, arrived_ms: int = 0) -> list[Segment]:
        """Take one fragment; returns the segments it closed, oldest first.

        ``arrived_ms``: the timeline when it arrived (0: unknown, its end counts alone).
        """
        if event_id in self._seen or not delta:
            return []
        self._seen[event_id] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        self._recent.append((role, start_ms, end_ms, delta))
        closed: list[Segment] = []
        other: Role = "assistant" if role == "user" else "user"
        theirs = self.open.get(other)
        if theirs is not None:
            if start_ms >= theirs.end_ms:
                closed.append(self.open.pop(other))
            elif role == "user":
                theirs.barged = True
        mine = self.open.get(role)
        if mine is not None and (start_ms - mine.end_ms > self.quiet_ms
                                 or self._began.get(other, -1) > mine.start_ms
                                 or start_ms < mine.start_ms):  # a new turn, or a reset
            closed.append(self.open.pop(role))
            mine = None
        if mine is None:
            mine = self.open[role] = Segment(role, start_ms, end_ms)
            self._began[role] = start_ms
        self._append(mine, delta)
        mine.end_ms = max(mine.end_ms, end_ms)
        mine.arrived_ms = max(mine.arrived_ms, arrived_ms)
        return sorted(closed, key=lambda s: s.start_ms)

    def _append(self, seg: Segment, delta: str) -> None:
        size = utf8_len(delta)
        if seg.size + size > self.max_bytes:
            seg.cut = True
            self.fragments_cut += 1
            return
        seg.parts.append(delta)
        seg.size += size
        if len(seg.parts) > 64:  # one string, not thousands of small ones
            seg.parts[:] = ["".join(seg.parts)]

    def advance(self, timeline_ms: float) -> list[Segment]:
        """Close the segments the timeline has left ``quiet_ms`` behind."""
        if not self.open:
            return []
        done = [r for r, s in self.open.items()
                if timeline_ms >= max(s.end_ms, s.arrived_ms) + self.quiet_ms]
        return sorted((self.open.pop(r) for r in done), key=lambda s: s.start_ms)

    def close(self) -> list[Segment]:
        """The session ended: every open segment is closed."""
        closed = sorted(self.open.values(), key=lambda s: s.start_ms)
        self.open.clear()
        return closed

    def user_words(self, until_ms: int) -> str:
        """The user's words since the assistant's last speech ending by ``until_ms``.

        Fragments are taken by position on the timeline, not by arrival, so words
        transcribed after the delegation that asks about them still count.
        """
        after = max((e for r, _, e, _ in self._recent if r == "assistant" and e <= until_ms),
                    default=-1)
        words = [(s, d) for r, s, e, d in self._recent
                 if r == "user" and e > after and s <= until_ms]
        return valid_text("".join(d for _, d in sorted(words, key=lambda w: w[0]))).strip()
