"""Software speaker volume, persisted across restarts.

Applied to reply audio before it is queued, so it works on every backend and device
(many USB speakers have no ALSA mixer control). The percentage maps to an amplitude
factor on a square law, close to how loud people hear it: 50 % is -12 dB.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class Volume:
    """The speaker volume in percent (0-100), kept in ``path`` when one is given."""

    def __init__(self, path: Path | None, default: int = 100) -> None:
        self.path = path
        self.percent = default
        if path is not None:
            try:
                self.percent = max(0, min(100, int(path.read_text().strip())))
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as e:
                logger.warning("volume file %s unreadable (%s); using %d %%", path, e, default)
        self._factor = (self.percent / 100) ** 2

    def set(self, percent: int) -> int:
        """Set and persist the volume (clamped to 0-100); return the new value."""
        self.percent = max(0, min(100, int(percent)))
        self._factor = (self.percent / 100) ** 2
        if self.path is not None:
            try:
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(f"{self.percent}\n")
                os.replace(tmp, self.path)
            except OSError as e:
                logger.warning("could not save the volume to %s: %s", self.path, e)
        logger.info("volume %d %%", self.percent)
        return self.percent

    def apply(self, pcm: bytes) -> bytes:
        """Scale PCM16 by the volume (unchanged, not copied, at 100 %)."""
        if self._factor == 1.0:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) * self._factor
        out: bytes = np.clip(samples, -32768, 32767).astype("<i2").tobytes()
        return out
