"""The daemon against a misbehaving server: it never crashes, says what is happening,
retries within its backoff bounds, loses no transcript, and recovers by itself."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env, voiced_cmd, write_config
from tests.test_supervisor import Harness, roles, running
from voiced.audio.filebackend import WavFileSource
from voiced.core.effects import State
from voiced.errors import AudioDeviceError
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor import audio_keeper as supervisor

# quick retries; the keepalive stays at its default except where a test needs a dead peer
# noticed quickly: a 0.3 s pong deadline is missed by a loaded machine (the simulator and
# the daemon share one event loop here), and a test that counts sessions then sees two
FAST = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.4}


async def exchange(h: Harness, n: int) -> None:
    """Press, and wait for the n-th user+assistant pair."""
    await h.wait(lambda: h.state in (State.READY, State.LISTENING))
    if not h.sup.session.mic_on:
        h.sup._on_control("press")
    await h.wait(lambda: roles(h).count("assistant") >= n)


async def test_a_stalled_server_is_noticed_by_keepalive_and_left(tmp_path: Path) -> None:
    """A dead peer behind a live TCP connection is left within two keepalive periods and
    a new session configured. (Only that: with a keepalive this short, a loaded machine's
    late pongs also end healthy sessions now and then, so this test holds no exchange.)"""
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, realtime={**FAST, "keepalive_s": 1.0}) as h:
            await h.wait(lambda: h.state == State.READY)
            mark, stalled = len(h.states), len(sim.sessions)
            sim.stall()  # no events, no pongs: a dead peer behind a live TCP connection
            # the history, not the current state: the reconnect may already be through
            await h.wait(lambda: State.CONNECTING in h.states[mark:])
            await h.wait(lambda: len(sim.sessions) > stalled and h.sup.session.connected)


async def test_binary_oversized_and_out_of_order_frames_do_not_hurt(tmp_path: Path) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, speed=3, realtime=FAST) as h:
            await h.wait(lambda: h.state == State.READY)
            await sim.inject(b"\x00\x01\x02 binary")
            await sim.inject(json.dumps({"type": "response.output_audio.delta",
                                         "response_id": "resp_ghost", "item_id": "item_ghost",
                                         "output_index": 0, "content_index": 0,
                                         "delta": "AAAA", "event_id": "e1"}))
            await sim.inject(json.dumps({"type": "response.done", "event_id": "e2",
                                         "response": {"id": "resp_unknown", "status":
                                                      "completed", "output": []}}))
            await h.wait(lambda: h.sup.malformed_frames >= 1)
            await exchange(h, 1)
            assert len(sim.sessions) == 1  # none of that cost the connection
            await sim.inject("x" * (17 << 20))  # past max_size: the client must hang up
            await h.wait(lambda: len(sim.sessions) == 2 and h.sup.session.connected)
            h.sup._on_control("press")  # mic off, then on: a second question
            await exchange(h, 2)
            assert h.state != State.ERROR


async def test_errors_for_the_clients_own_mistakes_change_nothing(
        tmp_path: Path, user_transcript: str) -> None:
    async with SimServer(SimOptions(pace=4, user_transcript=user_transcript)) as sim:
        async with running(tmp_path, sim, speed=3, realtime=FAST) as h:
            await h.wait(lambda: h.state == State.READY)
            before = h.state
            assert h.sup._link is not None
            h.sup._link.queue.put_nowait({"type": "response.cancel", "event_id": "evt_x"})
            await h.wait(lambda: h.sup.session.counters.server_errors == 1)
            assert h.state == before and len(sim.sessions) == 1
            await exchange(h, 1)


async def test_refused_connections_retry_within_backoff_and_recover(tmp_path: Path) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, speed=3, realtime=FAST) as h:
            await h.wait(lambda: h.state == State.READY)
            waited: list[float] = []  # the delays the daemon asked for, then waited out
            wait = h.sup.backoff_wait

            async def recorded(wake: Any, delay: float) -> Any:
                waited.append(delay)
                return await wait(wake, delay)

            h.sup.backoff_wait = recorded
            first = len(sim.attempts)
            sim.refuse_connections = True
            sim.drop_connections()
            await h.wait(lambda: h.state == State.CONNECTING)
            await h.wait(lambda: len(sim.attempts) >= first + 6)
            attempts = len(sim.attempts) - first
            # a delay before every attempt: never sooner than half the backoff's base,
            # which doubles from the minimum (0.1 s) up to the maximum (0.4 s)
            assert attempts <= len(waited) <= attempts + 1, (attempts, waited)
            for i, delay in enumerate(waited):
                base = min(0.4, 0.1 * 2 ** i)
                assert base / 2 <= delay <= base, (i, waited)
            sim.refuse_connections = False
            await h.wait(lambda: h.sup.session.connected)
            await exchange(h, 1)
            assert [r["role"] for r in h.records] == ["user", "assistant"]


async def test_a_drop_mid_reply_loses_no_transcript(tmp_path: Path,
                                                     user_transcript: str) -> None:
    async with SimServer(SimOptions(pace=4, drop_mid_response=1,
                                    user_transcript=user_transcript)) as sim:
        async with running(tmp_path, sim, speed=3, realtime=FAST) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: len(sim.sessions) == 2 and h.sup.session.connected)
            await h.wait(lambda: roles(h)[:1] == ["user"])
            first_user = sim.sessions[0].sent
            said = [e["transcript"] for e in first_user
                    if e["type"] == "conversation.item.input_audio_transcription.completed"]
            assert [r["text"] for r in h.records if r["role"] == "user"][:1] == said[:1]
            # the reply it cut: what arrived played out, recorded with the words so far
            words = "".join(e["delta"] for e in first_user
                            if e["type"] == "response.output_audio_transcript.delta")
            assert words
            await h.wait(lambda: "assistant" in roles(h))
            cut = next(r for r in h.records if r["role"] == "assistant")
            assert cut["text"] == words, (cut, words)


async def test_ten_minutes_of_refused_connections_in_simulated_time(tmp_path: Path) -> None:
    """Backoff delays are recorded instead of slept: ten minutes pass in a second or two."""
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, speed=3, realtime={
                "reconnect_min_s": 0.5, "reconnect_max_s": 30}) as h:
            await h.wait(lambda: h.state == State.READY)
            waited: list[float] = []

            async def fast_forward(wake: Any, delay: float) -> None:
                waited.append(delay)
                if hasattr(wake, "close"):
                    wake.close()  # the event wait is not needed: time "passes" at once
                await asyncio.sleep(0.005)

            h.sup.backoff_wait = fast_forward
            sim.refuse_connections = True
            sim.drop_connections()
            await h.wait(lambda: sum(waited) >= 600)
            assert h.state == State.CONNECTING
            assert all(0.25 <= d <= 30 for d in waited), waited  # within the bounds
            assert max(waited) > 15  # it really backed off towards the maximum
            assert sum(1 for d in waited if d > 15) >= len(waited) // 2  # and stayed there
            sim.refuse_connections = False
            await h.wait(lambda: h.sup.session.connected)
            await exchange(h, 1)
            assert len(h.records) == 2


async def test_a_request_shape_refusal_is_a_config_error(tmp_path: Path) -> None:
    """Close 4000 (the beta dialect, an unknown model): exit 78 naming the key."""
    from websockets.asyncio.server import ServerConnection, serve

    async def refuse(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "error", "event_id": "e1", "error": {
            "type": "invalid_request_error", "code": "beta_api_shape_disabled",
            "message": "The Realtime Beta API is no longer supported.", "param": None,
            "event_id": None}}))
        await ws.close(4000, "invalid_request_error.beta_api_shape_disabled")

    async with serve(refuse, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        cfg = write_config(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime")
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=clean_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    text = err.decode()
    assert proc.returncode == 78, text[-2000:]
    assert "voiced: config error: realtime.url: the server refused the session" in text
    assert "Traceback" not in text


class UnpluggableMic(WavFileSource):
    """The WAV mic with a plug: unplugged, reads fail and the device will not open.

    Records when each open was tried (the supervisor's retry schedule)."""

    def __init__(self) -> None:
        super().__init__(QUESTION_WAV, speed=3)
        self.plugged = True
        self.opens: list[float] = []

    async def start(self) -> None:
        self.opens.append(time.monotonic())
        if not self.plugged:
            raise AudioDeviceError('microphone "usb mic" not found')
        await super().start()

    async def read(self) -> bytes:
        if not self.plugged:
            await asyncio.sleep(0.05)
            raise AudioDeviceError('microphone "usb mic" delivers no audio')
        return await super().read()


async def unplug(h: Harness, mic: UnpluggableMic, tries: int) -> int:
    """Unplug a mic that works, and wait for ``tries`` failed opens; returns the index in
    ``mic.opens`` of the first."""
    await h.wait(lambda: h.state == State.READY)
    first = len(mic.opens)
    mic.plugged = False
    await h.wait(lambda: len(mic.opens) >= first + tries)
    return first


def record_device_waits(h: Harness, *, seconds: float | None = None) -> list[float]:
    """The waits the daemon asks for between tries to open the audio devices, as they
    are asked for; with ``seconds``, each waits that long instead (a new sound card
    still ends it early)."""
    asked: list[float] = []
    wait = h.sup._wait_for_sound_cards

    async def recorded(delay: float, *, step: float) -> None:
        asked.append(delay)
        await wait(delay if seconds is None else seconds, step=step)

    h.sup._wait_for_sound_cards = recorded
    return asked


async def test_reopening_a_missing_device_backs_off(tmp_path: Path) -> None:
    """Retries come after reopen_s, then twice as long each time, up to reopen_max_s."""
    mic = UnpluggableMic()
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, source=mic,
                           audio={"reopen_s": 0.1, "reopen_max_s": 0.4}) as h:
            asked = record_device_waits(h)
            first = await unplug(h, mic, 6)
            tries = len(mic.opens) - first
            # a wait before every try, each twice the one before, up to the cap
            assert tries <= len(asked) <= tries + 1, (tries, asked)
            assert asked[:5] == [0.1, 0.2, 0.4, 0.4, 0.4], asked
            assert h.state == State.ERROR
            mic.plugged = True
            await h.wait(lambda: h.state in (State.READY, State.LISTENING))
            assert h.sup.device_faults == 1


async def test_a_sound_card_appearing_is_tried_at_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A USB card plugged back in shows in /dev/snd: no waiting out a long backoff."""
    snd = tmp_path / "snd"
    snd.mkdir()
    monkeypatch.setattr(supervisor, "SOUND_DIR", snd)
    mic = UnpluggableMic()
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, source=mic,
                           audio={"reopen_s": 0.1, "reopen_max_s": 30}) as h:
            # every wait between tries lasts an hour: only a new sound card can end it
            asked = record_device_waits(h, seconds=3600)
            await h.wait(lambda: h.state == State.READY)
            opens = len(mic.opens)
            mic.plugged = False
            await h.wait(lambda: len(asked) == 1)  # the daemon is waiting its hour
            mic.plugged = True
            (snd / "pcmC1D0c").touch()
            await h.wait(lambda: h.state in (State.READY, State.LISTENING))
            assert len(mic.opens) == opens + 1 and len(asked) == 1
