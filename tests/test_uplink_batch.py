"""Issue 21 (active CPU): the mic hands its frames over a block at a time, and the link
joins appends queued back to back into one socket frame. Order, every sample, and the
commit/clear boundaries must survive the join; a real websockets server receives."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from voiced import wire
from voiced.link import Link


async def _sent(events: list[wire.ClientEvent]) -> list[dict[str, Any]]:
    """What a server receives when ``events`` are queued on one link at once."""
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        async for msg in ws:
            got.append(json.loads(msg))
            if got[-1].get("event_id") == "last":
                done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            link = Link(ws, lambda _f: None)
            for e in events:  # all queued before the sender runs: the worst case
                link.send(e)
            link.send({"type": "input_audio_buffer.clear", "event_id": "last"})
            link.start()
            await asyncio.wait_for(done.wait(), 10)
            await link.aclose()
    return got


def _frame(k: int, n: int = 480) -> bytes:
    """A 20 ms frame whose samples say which frame they are from (k) and where."""
    return b"".join(((k * 1000 + i) % 32768).to_bytes(2, "little") for i in range(n))


def test_appends_queued_back_to_back_go_as_one_in_order_and_whole() -> None:
    frames = [_frame(k) for k in range(7)]
    events: list[wire.ClientEvent] = [wire.audio_append(f"a{k}", f) for k, f in
                                      enumerate(frames[:3])]
    events.append({"type": "input_audio_buffer.commit", "event_id": "c"})
    events += [wire.audio_append(f"a{k}", f) for k, f in enumerate(frames[3:5], 3)]
    events.append({"type": "input_audio_buffer.clear", "event_id": "x"})
    events += [wire.audio_append(f"a{k}", f) for k, f in enumerate(frames[5:], 5)]
    got = asyncio.run(_sent(events))
    assert [(g["type"], g["event_id"]) for g in got] == [
        ("input_audio_buffer.append", "a0"), ("input_audio_buffer.commit", "c"),
        ("input_audio_buffer.append", "a3"), ("input_audio_buffer.clear", "x"),
        ("input_audio_buffer.append", "a5"), ("input_audio_buffer.clear", "last")]
    pcm = [base64.b64decode(g["audio"], validate=True) for g in got if "audio" in g]
    # every sample, in order, each on its side of the commit and the clear
    assert pcm == [b"".join(frames[:3]), b"".join(frames[3:5]), b"".join(frames[5:])]


def test_a_padded_append_ends_the_join() -> None:
    odd = b"\x01\x02\x03\x04"  # 4 bytes: base64 with padding cannot be joined as text
    events: list[wire.ClientEvent] = [wire.audio_append("a0", _frame(0)),
                                      wire.audio_append("a1", odd),
                                      wire.audio_append("a2", _frame(2))]
    got = asyncio.run(_sent(events))
    pcm = [base64.b64decode(g["audio"], validate=True) for g in got if "audio" in g]
    assert pcm == [_frame(0) + odd, _frame(2)]


def test_a_join_stops_at_about_a_second() -> None:
    frames = [_frame(k) for k in range(120)]  # 2.4 s queued behind a stalled sender
    got = asyncio.run(_sent([wire.audio_append(f"a{k}", f) for k, f in enumerate(frames)]))
    pcm = [base64.b64decode(g["audio"], validate=True) for g in got if "audio" in g]
    assert b"".join(pcm) == b"".join(frames)
    assert 3 <= len(pcm) <= 4
    assert all(len(p) <= 64_000 * 3 // 4 + 960 for p in pcm)
