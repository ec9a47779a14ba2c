"""Jittered exponential delays between retries."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    """Jittered exponential reconnect delays.

    Each delay is drawn uniformly from [base/2, base] where base doubles from
    ``min_s`` up to ``max_s``; :meth:`reset` after a connection proved stable.
    """

    min_s: float = 0.5
    max_s: float = 30.0
    rand: Callable[[], float] = random.random
    attempts: int = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        base = min(self.max_s, self.min_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return float(base * (0.5 + 0.5 * self.rand()))

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempts = 0
