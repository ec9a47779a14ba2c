"""The exception tree of voiced.

VoicedError
├── ConfigError          (ValueError)   bad YAML, bad value, missing secret; exit 78
├── AudioDeviceError     (OSError)      a mic or speaker cannot be opened or failed
├── RealtimeError        (ConnectionError)  connection failed; .retryable decides
└── BackendError         (OSError)      a relay store failure (relay/store.py derives its
                                         errors from it; the device's sinks return Results)
"""

from __future__ import annotations


class VoicedError(Exception):
    """Root of every error voiced raises on purpose."""


class ConfigError(VoicedError, ValueError):
    """One or more configuration problems; each is ``(dotted_key, message)``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" for k, m in problems))

    def lines(self) -> list[str]:
        """The problems as the contract's ``voiced: config error: <key>: <what>`` lines."""
        return [f"voiced: config error: {key}: {msg}" for key, msg in self.problems]


class AudioDeviceError(VoicedError, OSError):
    """An audio device could not be opened, or failed while running."""


class RealtimeError(VoicedError, ConnectionError):
    """The Realtime connection failed; ``retryable`` decides reconnect vs. error state."""

    def __init__(self, message: str, *, retryable: bool, auth: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.auth = auth


class BackendError(VoicedError, OSError):
    """A backend store failed (the relay's store errors derive from it)."""
