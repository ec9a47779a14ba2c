"""Transcript records (contract §4): the utterance, its record, its id.

A record's ``id`` is a UUID derived from ``device_id`` + the Realtime ``item_id``, so a
retry can never create a duplicate at a backend. Pure and shared: the core makes
:class:`Transcript` values, the supervisor and the relay turn them into records.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

logger = logging.getLogger(__name__)

RECORD_NAMESPACE: Final = uuid.UUID("6f1c1d2e-5a0b-4c8e-9d61-7a0f3c2b9e10")


@dataclass(frozen=True, slots=True)
class Transcript:
    """One user or assistant utterance, to become a transcript record."""

    role: str
    text: str
    item_id: str
    conversation_id: str
    metadata: dict[str, Any]


def record_id(device_id: str, item_id: str) -> str:
    """The deterministic record id for one Realtime item on one device."""
    return str(uuid.uuid5(RECORD_NAMESPACE, f"{device_id}/{item_id}"))


def iso_utc(epoch_s: float) -> str:
    """``2026-11-24T18:03:11.402Z`` for an epoch time."""
    dt = datetime.fromtimestamp(epoch_s, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def make_record(t: Transcript, *, device_id: str, created_at: float) -> dict[str, Any]:
    """The contract's JSON object for a transcript."""
    return {
        "id": record_id(device_id, t.item_id),
        "conversation_id": t.conversation_id,
        "device_id": device_id,
        "role": t.role,
        "text": t.text,
        "created_at": iso_utc(created_at),
        "metadata": dict(t.metadata),
    }
