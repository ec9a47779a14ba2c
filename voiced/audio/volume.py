"""Software speaker volume, persisted across restarts.

Applied to reply audio before it is queued, so it works on every backend and device
(many USB speakers have no ALSA mixer control). The percentage maps to an amplitude
factor on a square law, close to how loud people hear it: 50 % is -12 dB. The gain is
libsoxr's at equal rates: rounded to nearest and clipped, in C; flushed after every chunk so
nothing of one reply is held back into the next.
"""

from __future__ import annotations

import logging
from pathlib import Path

from voiced import guard
from voiced.audio.libsoxr import Resampler
from voiced.errors import AudioDeviceError
from voiced.wire import SAMPLE_RATE

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
        self._gain: Resampler | None = None
        try:
            self._use(self.percent)
        except AudioDeviceError as e:  # the daemon still starts, and says why it is loud
            logger.error("volume %d %% cannot be applied (%s): playing at 100 %%",
                         self.percent, e)
            self.percent = 100

    def _use(self, percent: int) -> None:
        """Switch to ``percent``; on failure (no libsoxr) nothing changes."""
        factor = (percent / 100) ** 2
        self._gain = None if factor == 1.0 else Resampler(SAMPLE_RATE, SAMPLE_RATE,
                                                          gain=factor)
        self.percent = percent

    def set(self, percent: int) -> int:
        """Set and persist the volume (clamped to 0-100); return the new value."""
        self._use(max(0, min(100, int(percent))))
        if self.path is not None:
            guard.keep_small_file(self.path, f"{self.percent}\n", "volume", logger)
        logger.info("volume %d %%", self.percent)
        return self.percent

    def apply(self, pcm: bytes) -> bytes:
        """Scale PCM16 by the volume (unchanged, not copied, at 100 %)."""
        if self._gain is None:
            return pcm
        try:
            return self._gain.process(pcm, last=True)
        finally:
            self._gain.clear()
