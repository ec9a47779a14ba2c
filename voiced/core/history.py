"""The conversation so far, as text: what a new session of it is re-seeded with."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Literal

from voiced import wire

Role = Literal["user", "assistant"]


class History:
    """The last user and assistant turns (as many as ``reseed_turns``), oldest first."""

    def __init__(self) -> None:
        self.turns: deque[tuple[Role, str]] = deque()
        self.count = 0
        """Turns remembered so far, to tell which a standby session missed."""

    def remember(self, role: Role, text: str, keep: int) -> None:
        """Add a turn; only the newest ``keep`` stay."""
        self.count += 1
        # valid text only: one lone surrogate here made every re-seed fail to encode
        self.turns.append((role, wire.valid_text(text)))
        while len(self.turns) > keep:
            self.turns.popleft()

    def since(self, count: int) -> list[tuple[Role, str]]:
        """The turns remembered after :attr:`count` was ``count`` (those still kept)."""
        missed = min(self.count - count, len(self.turns))
        return list(self.turns)[len(self.turns) - missed:]

    def clear(self) -> None:
        """A new conversation: nothing to re-seed."""
        self.turns.clear()

    def __iter__(self) -> Iterator[tuple[Role, str]]:
        return iter(self.turns)

    def __len__(self) -> int:
        return len(self.turns)

    def __bool__(self) -> bool:
        return bool(self.turns)
