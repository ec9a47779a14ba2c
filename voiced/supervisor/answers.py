"""The control socket's answers: ``voiced ctl status``, press, interrupt, volume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from voiced import __version__, guard
from voiced.errors import AudioDeviceError
from voiced.transcripts import iso_utc

if TYPE_CHECKING:
    from voiced.supervisor.daemon import Supervisor


def status(sup: Supervisor) -> dict[str, Any]:
    """The contract's status object.

    ``faults`` counts unexpected exceptions contained, by boundary (empty when all is
    well); ``audio_queued_ms``, ``pending_items`` and ``transcript_bytes`` show the
    resource bounds at work.
    """
    st = sup.session.status()
    exp = st.pop("session_expires_at")
    try:
        expires = iso_utc(exp) if exp else None
    except (ValueError, OverflowError, OSError):  # never a reason for status to fail
        expires = None
    return {**st, "session_expires_at": expires,
            "outbox_pending": sup.outbox.pending if sup.outbox else 0,
            "version": __version__,
            "device_id": sup.settings.device_id,
            "malformed_frames": sup.malformed_frames,
            "records_written": sup.records_written,
            "device_faults": sup.device_faults,
            "audio_queued_ms": round(sup.sink.queued_s * 1000),
            **sup.hands.status(),  # echo, the canceller's figures, wake word, earcons
            "faults": dict(guard.faults)}


def answer(sup: Supervisor, cmd: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request of ``voiced ctl`` (the control server has checked its shape)."""
    now = sup._now()
    if cmd == "volume":
        if args and "percent" in args:  # a person may go to 0 %: the model has a floor
            try:
                sup.volume.set(args["percent"])
            except AudioDeviceError as e:
                return {"ok": False, "error": f"volume: {e}"}
        return {"ok": True, "volume_percent": sup.volume.percent,
                "status": sup.status()}
    if cmd == "press":
        sup.session.on_press(now)
    elif cmd == "long-press":
        sup.session.on_long_press(now)
    elif cmd == "interrupt":
        sup.session.on_interrupt(now)
    sup._apply(sup.session.take_effects())
    return {"ok": True, "status": sup.status()}
