"""Exponential delays between retries: the one helper for every retry loop.

The Realtime reconnect (supervisor/connection.py), the outbox's delivery retries and the
audio devices' reopening (supervisor/audio_keeper.py) all wait by it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential delays, jittered unless told not to.

    Each delay is drawn uniformly from [base/2, base] where base doubles from ``min_s``
    up to ``max_s`` (with ``jitter=False`` it is base itself); :meth:`reset` after a
    success. Jitter spreads many devices' retries against one server; a local device
    has no herd to spread, so the audio reopening goes without.
    """

    min_s: float = 0.5
    max_s: float = 30.0
    rand: Callable[[], float] = random.random
    attempts: int = 0
    jitter: bool = True

    def next(self) -> float:
        """The delay before the next attempt."""
        base = min(self.max_s, self.min_s * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return float(base * (0.5 + 0.5 * self.rand()) if self.jitter else base)

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self.attempts = 0
