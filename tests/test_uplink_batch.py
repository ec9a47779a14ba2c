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


class _Stream:
    """Stands in for an open PortAudio stream (nothing here starts or stops it)."""

    def stop_stream(self) -> None: ...

    def close(self) -> None: ...


class _PortAudio:
    """Stands in for the PortAudio instance an open mic holds."""

    def terminate(self) -> None: ...


def _keeper(mic: Any, fed: list[bytes]) -> Any:
    from voiced.supervisor.audio_keeper import AudioKeeper

    def feed(_boundary: str, give: Any, *args: Any) -> None:
        give(*args)

    return AudioKeeper(mic, None, None, None, feed, lambda: None,  # type: ignore[arg-type]
                       fed.append, lambda: 0.0)


async def _pushing_mic() -> tuple[Any, Any, list[bytes], asyncio.Task[None]]:
    from voiced.audio.pyaudio_backend import PyAudioSource
    from voiced.config import AudioEndpointSettings

    mic = PyAudioSource(AudioEndpointSettings(device="pulse"))
    mic._loop = asyncio.get_running_loop()
    mic._pa, mic._stream, mic._generation = _PortAudio(), _Stream(), 1
    mic._last_callback = float("inf")  # never silent for long, however slow the machine
    fed: list[bytes] = []
    keeper = _keeper(mic, fed)
    pump = asyncio.create_task(keeper.mic_pump())
    for _ in range(5):
        await asyncio.sleep(0)
    return mic, keeper, fed, pump


async def test_a_mic_block_reaches_the_core_in_the_hand_over_itself() -> None:
    """Issue 21: the block's frames go into the core within the hand-over, with no turn
    of the pump task between (before: the hand-over woke the pump, which fed them on the
    loop's next turn, then the sender's turn came)."""
    mic, _keeper_, fed, pump = await _pushing_mic()
    frames = [_frame(k) for k in range(3)]
    mic._deliver(frames, 1)
    assert fed == frames  # no await in between: nothing else ran
    assert not mic._frames
    mic._deliver([_frame(9)], 2)  # from a stream closed since: not fed
    assert fed == frames
    pump.cancel()


async def test_frames_queued_while_the_devices_reopen_come_first_and_in_order() -> None:
    mic, keeper, fed, pump = await _pushing_mic()
    keeper.ok.clear()  # as _reopen does: a fault, the devices being reopened
    keeper._pause()
    mic._deliver([_frame(0), _frame(1)], 1)  # queued: nothing goes into the core now
    assert fed == []
    keeper.ok.set()
    mic._deliver([_frame(2)], 1)  # before the pump ran: behind the queued ones
    for _ in range(10):
        await asyncio.sleep(0)
    mic._deliver([_frame(3)], 1)  # the queue empty again: straight in
    assert fed == [_frame(k) for k in range(4)]
    pump.cancel()


async def test_a_frame_that_turns_the_mic_off_drops_the_rest_of_its_block() -> None:
    """As read() did: a stop clears what was queued; the pushed block's later frames go
    with it."""
    mic, keeper, fed, pump = await _pushing_mic()

    def off_at_first(frame: bytes) -> None:
        fed.append(frame)
        mic._capture = False  # as set_capturing(False) leaves it (no stream to stop here)

    keeper._on_frame = off_at_first
    mic._deliver([_frame(0), _frame(1), _frame(2)], 1)
    assert fed == [_frame(0)]
    pump.cancel()
