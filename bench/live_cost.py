"""What the GPT-Live core costs, beside the Realtime core in the same run.

Run: ``.venv/bin/python bench/live_cost.py [--frames 20000]``. With a session open and
the mic on (full duplex, so every frame is sent):

- a mic frame (20 ms) through ``LiveConversation.on_mic_frame`` and through
  ``Conversation.on_audio_captured``, the Realtime baseline, each with its JSON encoding;
- a 100 ms reply delta through the Live parser and core, speech and digital silence
  (ten a second, for the whole session: the silence is most of them).

CPU time (``time.process_time``), not wall time: a busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_session import configured  # noqa: E402
from voiced import wire  # noqa: E402
from voiced.live import wire as lw  # noqa: E402
from voiced.live.core import LiveConversation, LiveSettings  # noqa: E402

FRAME = os.urandom(960)
SPEECH = os.urandom(4800)
SILENCE = bytes(4800)


def live() -> LiveConversation:
    c = LiveConversation(LiveSettings(half_duplex=False), conversation_id="c",
                         new_id=lambda: "d")
    c.on_devices_ready()
    c.on_press(0.0)
    c.on_connection_up(0.0)
    c.on_server_event(lw.SessionStarted("live_1", None, "gpt-live-1", None), 0.0)
    c.take_effects()
    return c


def per_call(n: int, step: Callable[[], object]) -> float:
    t0 = time.process_time()
    for _ in range(n):
        step()
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20_000)
    n = ap.parse_args().frames
    lc = live()
    rc = configured()
    rc.on_press(0.0)
    rc.take_effects()

    def live_frame() -> None:
        lc.on_mic_frame(FRAME, 0.0)
        for e in lc.take_effects():
            lw.encode(e.event)

    def realtime_frame() -> None:
        rc.on_audio_captured(FRAME, 0.0)
        for e in rc.take_effects():
            wire.encode(e.event)

    def delta(pcm: bytes) -> Callable[[], None]:
        text = lw.encode(lw.audio_append(pcm)).replace(
            '"session.input_audio.append","audio"', '"session.output_audio.delta","delta"')

        def step() -> None:
            lc.on_server_event(lw.parse_server_event(text), 0.0)
            lc.take_effects()
        return step

    print(f"mic frame, Live core + JSON:      {per_call(n, live_frame):6.1f} µs")
    print(f"mic frame, Realtime core + JSON:  {per_call(n, realtime_frame):6.1f} µs (baseline)")
    print(f"reply delta, speech, parse + core: {per_call(n // 4, delta(SPEECH)):6.1f} µs")
    lc.on_playback_drained(0.0)
    print(f"reply delta, silence, parse + core: {per_call(n // 4, delta(SILENCE)):5.1f} µs")


if __name__ == "__main__":
    main()
