"""What voiced's own code costs per 20 ms mic frame, without sockets or devices.

Run: ``.venv/bin/python bench/frame_cost.py [--frames 20000]``. Feeds frames through the
session core with the mic on and a configured session, encodes every append as it goes
on the socket, and frames it as websockets does (masking included). The baseline, in the
same run, is what asyncio itself takes for one hand-over from a thread to a task
(``call_soon_threadsafe``, a future, the task waking), which every frame needs once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from websockets.client import ClientProtocol
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_session import configured  # noqa: E402
from voiced import wire  # noqa: E402
from voiced.core.effects import Send  # noqa: E402

FRAME = os.urandom(960)  # 20 ms of 24 kHz PCM16


def core_and_wire(frames: int) -> tuple[float, float, float]:
    """Microseconds per frame: session core, JSON + base64 encoding, websockets framing."""
    conv = configured()  # devices open, session configured
    conv.on_press(0.0)
    conv.take_effects()
    events: list[wire.ClientEvent] = []
    t0 = time.process_time()
    for i in range(frames):
        conv.on_audio_captured(FRAME, 1.0 + i * 0.02)
        events += [e.event for e in conv.take_effects() if isinstance(e, Send)]
    t1 = time.process_time()
    if len(events) != frames:
        raise SystemExit(f"expected {frames} appends, the core sent {len(events)}")
    texts = [wire.encode(e) for e in events]
    t2 = time.process_time()
    proto = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    proto.state = WsState.OPEN
    for text in texts:
        proto.send_text(text.encode())
        proto.data_to_send()
    t3 = time.process_time()
    return tuple(1e6 * d / frames for d in (t1 - t0, t2 - t1, t3 - t2))  # type: ignore[return-value]


async def hand_over(frames: int) -> float:
    """Microseconds per thread-to-task hand-over through asyncio (the baseline)."""
    loop = asyncio.get_running_loop()
    t0 = time.process_time()
    for _ in range(frames):
        fut = loop.create_future()
        loop.call_soon_threadsafe(fut.set_result, None)
        await fut
    return 1e6 * (time.process_time() - t0) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20000)
    args = ap.parse_args()
    core, encode, framing = core_and_wire(args.frames)
    base = asyncio.run(hand_over(args.frames))
    total = core + encode + framing
    for name, us in (("session core", core), ("JSON + base64", encode),
                     ("websockets framing", framing), ("voiced per frame", total),
                     ("baseline: one asyncio hand-over", base)):
        print(f"{name:<32} {us:6.1f} us  ({us * 50 / 1e4:.3f} % of a core at 50 frames/s)")


if __name__ == "__main__":
    main()
