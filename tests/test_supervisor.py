"""The daemon in-process against the simulator: faults, interruptions, new conversations."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import wave
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import QUESTION_WAV, TIMEOUT
from voiced import config
from voiced.audio.filebackend import WavFileSink, WavFileSource, read_wav_as_wire
from voiced.core.effects import State
from voiced.link import Link
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor.builders import build_audio
from voiced.supervisor.daemon import Supervisor


class Harness:
    """A running Supervisor plus what it reported."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.states: list[State] = []
        self.details: list[str] = []  # the STATUS= detail of each state shown
        self.records: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def listen(self, kind: str, data: Any) -> None:
        if kind == "state":
            self.states.append(data)
            self.details.append(self.sup.session.status()["detail"])
        elif kind == "record":
            self.records.append(data)
        self.changed.set()

    async def wait(self, pred: Callable[[], bool], within_s: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not pred():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)
        await asyncio.wait_for(loop(), within_s)

    @property
    def state(self) -> State:
        return self.sup.session.state


@contextlib.asynccontextmanager
async def running(tmp_path: Path, sim: SimServer, *, speed: float = 1.0,
                  environ: dict[str, str] | None = None,
                  wall_clock: Callable[[], float] = time.time, pin_factory: Any = None,
                  mic_wav: Path = QUESTION_WAV, source: WavFileSource | None = None,
                  adjust: Callable[[config.Settings], config.Settings] | None = None,
                  from_file: bool = False, **overrides: Any) -> AsyncIterator[Harness]:
    """The daemon in this process; ``from_file`` loads its settings from a YAML file
    (tmp_path/voiced.yaml), which a reload then reads again; ``adjust`` changes them
    past what the config would accept, to test a later line of defence."""
    raw: dict[str, Any] = {
        "device_id": "t",
        # connect_timeout_s: the default 10 s; a short one (it was 2 s) made a session the
        # loaded machine configured late into a reconnect, and tests count sessions
        "realtime": {"url": sim.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3},
        "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                  "output": {"file": str(tmp_path / "out.wav")}},
        "transcripts": {"sink": "jsonl", "jsonl": {"path": str(tmp_path / "t.jsonl")},
                        "outbox_dir": str(tmp_path / "outbox")},
        "control": {"socket": str(tmp_path / "ctl.sock")},
    }
    for k, v in overrides.items():
        raw[k] = {**raw.get(k, {}), **v}
    if from_file:
        path = tmp_path / "voiced.yaml"
        path.write_text(yaml.safe_dump(raw))
        settings = config.load(path, environ=environ or {})
    else:
        settings = config.parse(raw, environ=environ or {})
    if adjust is not None:  # what the config would refuse, to test a later line of defence
        settings = adjust(settings)
    source = source or WavFileSource(mic_wav, speed=speed)
    sink = WavFileSink(tmp_path / "out.wav", speed=speed,
                       max_queued_s=settings.audio.max_queued_s)
    h: Harness
    sup = Supervisor(settings, source=source, sink=sink, wall_clock=wall_clock,
                     pin_factory=pin_factory,
                     listener=lambda kind, data: h.listen(kind, data))
    h = Harness(sup)
    task = asyncio.create_task(sup.run())
    try:
        yield h
    finally:
        sup.request_stop()
        assert await asyncio.wait_for(task, TIMEOUT) == 0


def roles(h: Harness) -> list[str]:
    return [r["role"] for r in h.records]


def stops(speaker: WavFileSink) -> list[dict[str, int]]:
    """The speaker's own count of each item's samples written, at each of its stops.

    Read from the speaker just before the stop, not from what ``stop()`` returns: that
    names only items still queued (the core takes an absent item as heard in full), so
    when the reply had run dry at the stop (the network, or a loaded machine, fell
    behind) the item is absent and its count is all the speaker wrote of it.
    """
    counts: list[dict[str, int]] = []
    real_stop = speaker.stop

    def stop() -> Mapping[str, int]:
        counts.append(dict(speaker._played))
        return real_stop()

    speaker.stop = stop  # type: ignore[method-assign]
    return counts


def played_at_stop(counts: list[dict[str, int]], item_id: str) -> int:
    """What the speaker had written of ``item_id`` at the first stop after it began.

    Not simply the first stop's count: a press may stop the speaker (an earcon, a
    reply of the session before) before the item plays at all (a clean-clone run).
    """
    return next(c[item_id] for c in counts if item_id in c)


async def test_malformed_and_unknown_frames_are_counted_not_fatal(
        tmp_path: Path, user_transcript: str) -> None:
    async with SimServer(SimOptions(pace=4, malformed_every=3, unknown_every=4,
                                    user_transcript=user_transcript)) as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            assert h.sup.malformed_frames > 0
            assert h.sup.status()["malformed_frames"] == h.sup.malformed_frames
            assert len(sim.sessions) == 1  # no reconnect was needed


async def test_reconnects_after_a_drop_mid_response(tmp_path: Path,
                                                    user_transcript: str) -> None:
    async with SimServer(SimOptions(pace=4, drop_mid_response=1,
                                    user_transcript=user_transcript)) as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: len(sim.sessions) == 2 and h.sup.session.connected)
            assert State.CONNECTING in h.states[h.states.index(State.LISTENING):]
            assert roles(h)[:1] == ["user"]


async def test_wrong_api_key_is_the_error_state_with_a_clear_reason(tmp_path: Path) -> None:
    async with SimServer(SimOptions(require_key="right")) as sim:
        async with running(tmp_path, sim, environ={"OPENAI_API_KEY": "wrong"}) as h:
            await h.wait(lambda: h.state == State.ERROR)
            assert "API key" in (h.sup.session.fatal_reason or "")
            assert h.sup.status()["state"] == "error"
            # the account is fixed on the server's side: the next try gets a session,
            # and the error goes with it
            sim.options.require_key = "wrong"
            await h.wait(lambda: h.state == State.READY)
            assert h.sup.session.fatal_reason is None and h.sup.status()["state"] == "ready"
            assert len(sim.sessions) == 1


async def test_interrupt_truncates_at_the_played_position(tmp_path: Path) -> None:
    """The truncation, the record's heard_ms and what the speaker really played are one
    number: the speaker's own count at the stop (no clock involved)."""
    async with SimServer(SimOptions(pace=1)) as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            speaker = h.sup.sink
            assert isinstance(speaker, WavFileSink)
            counts = stops(speaker)
            h.sup._on_control("press")
            await h.wait(lambda: h.state == State.SPEAKING)
            # half a second of the reply played, by the speaker's count
            await h.wait(lambda: max(speaker._played.values(), default=0) >= 12_000)
            h.sup._on_control("interrupt")
            assert h.state == State.LISTENING
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            await h.wait(lambda: any(e["type"] == "conversation.item.truncated"
                                     for e in sim.sessions[0].sent))
            truncate = next(e for e in sim.sessions[0].received
                            if e["type"] == "conversation.item.truncate")
            md = h.records[1]["metadata"]
            assert md["interrupted"] is True
            played = played_at_stop(counts, truncate["item_id"])
            assert truncate["audio_end_ms"] == md["heard_ms"] == played * 1000 // 24_000
            assert md["heard_ms"] >= 500
            sent_ms = sim.sessions[0].item_audio_ms[truncate["item_id"]]
            assert truncate["audio_end_ms"] <= sent_ms
            reply = b"".join(base64.b64decode(e["delta"]) for e in sim.sessions[0].sent
                             if e["type"] == "response.output_audio.delta"
                             and e["item_id"] == truncate["item_id"])
            assert len(reply) > 2 * played  # it really was cut
    # the speaker wrote exactly the played part of the reply, then silence
    with wave.open(str(tmp_path / "out.wav"), "rb") as w:
        out = w.readframes(w.getnframes())
    at = out.find(reply[:2 * played])
    assert at > 0 and not any(out[at + 2 * played:at + 2 * played + 960])


async def test_long_press_starts_a_new_conversation_and_session(tmp_path: Path) -> None:
    async with SimServer() as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            first = h.sup.status()["conversation_id"]
            h.sup._on_control("long-press")
            await h.wait(lambda: len(sim.sessions) == 2 and h.state == State.READY)
            assert h.sup.status()["conversation_id"] != first
            assert h.sup.status()["mic"] == "off"


@pytest.mark.parametrize("cmd", ["status", "press", "interrupt"])
async def test_control_commands_reply_with_status(tmp_path: Path, cmd: str) -> None:
    from voiced.control import request
    async with SimServer() as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            reply = await asyncio.to_thread(request, tmp_path / "ctl.sock", cmd)
            assert reply["ok"] is True
            st = reply["status"]
            for key in ("state", "mic", "connected", "conversation_id", "session_expires_at",
                        "outbox_pending", "version"):
                assert key in st
            assert st["session_expires_at"] is not None


async def test_control_socket_is_0660_and_rejects_unknown_commands(tmp_path: Path) -> None:
    import json
    import socket
    async with SimServer() as sim:
        async with running(tmp_path, sim) as h:
            await h.wait(lambda: h.state == State.READY)
            path = tmp_path / "ctl.sock"
            assert path.stat().st_mode & 0o777 == 0o660

            def ask(line: bytes) -> dict[str, Any]:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(TIMEOUT)
                    s.connect(str(path))
                    s.sendall(line)
                    return dict(json.loads(s.makefile().readline()))
            assert (await asyncio.to_thread(ask, b'{"cmd": "reboot"}\n'))["ok"] is False
            assert (await asyncio.to_thread(ask, b"garbage\n"))["ok"] is False


async def test_the_configured_input_channel_is_the_one_heard(tmp_path: Path) -> None:
    """audio.input.channel reaches the mic the daemon builds: channel 1 of a stereo WAV
    whose channel 0 is different audio."""
    with wave.open(str(QUESTION_WAV), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        rate, speech = w.getframerate(), w.readframes(w.getnframes())
    other = bytes(reversed(speech))  # the same loudness, other samples

    def wav(name: str, channels: list[bytes]) -> Path:
        path = tmp_path / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(len(channels))
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"".join(b"".join(c[i:i + 2] for c in channels)
                                   for i in range(0, len(speech), 2)))
        return path

    stereo = wav("stereo.wav", [other, speech])
    # what each channel alone sounds like after the mic's conversion to 24 kHz
    want = {0: read_wav_as_wire(wav("left.wav", [other])), 1: read_wav_as_wire(QUESTION_WAV)}
    heard = {}
    for channel in (0, 1):
        settings = config.parse({
            "realtime": {"url": "ws://127.0.0.1:9/v1/realtime"},
            "audio": {"backend": "file", "input_file_starts": "at_start",
                      "input": {"file": str(stereo), "channel": channel},
                      "output": {"file": str(tmp_path / "out.wav")}}}, environ={})
        source, _ = build_audio(settings)
        await source.start()
        heard[channel] = b"".join([await source.read() for _ in range(5)])
        await source.aclose()
    assert heard[0] != heard[1]
    for channel in (0, 1):
        assert heard[channel] == want[channel][:len(heard[channel])], channel


async def test_file_speaker_counts_an_item_across_an_underrun(tmp_path: Path) -> None:
    """The file backend's played position (the one tests measure the core with) counts a
    reply that ran dry and resumed as one item, as the PyAudio sink does."""
    sink = WavFileSink(tmp_path / "out.wav", frame_ms=20)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    try:
        sink.play(bytes(2 * 4800), "item_1")  # 200 ms, then the network stalls
        await asyncio.wait_for(drained.wait(), TIMEOUT)
        sink.play(bytes(2 * 24000), "item_1")  # the same item resumes
        await asyncio.sleep(0.1)
        played = sink.stop()  # the barge-in
    finally:
        await sink.aclose()
    assert 4800 + 960 <= played["item_1"] <= 4800 + 24000, played


async def test_file_speaker_queue_holds_at_most_max_queued_s(tmp_path: Path) -> None:
    """Issue 17, finding 6: play() takes what fits in audio.max_queued_s, and says so."""
    sink = WavFileSink(tmp_path / "out.wav", frame_ms=20, max_queued_s=1.0)
    await sink.start()
    try:
        assert sink.play(bytes(2 * 30000), "item_1") == 2 * 24000  # 1.25 s offered
        assert sink.play(bytes(2 * 480), "item_1") == 0  # full
        assert 0.95 <= sink.queued_s <= 1.0
        await asyncio.sleep(0.2)  # it plays: room again
        assert 0 < sink.play(bytes(2 * 4800), "item_1") <= 2 * 4800
        assert sink.queued_s <= 1.0
    finally:
        await sink.aclose()


async def test_a_failure_no_link_task_contained_ends_the_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The links' readers and senders run in the daemon's task group: a failure none of
    them contained ends ``run()`` (systemd restarts the service) instead of leaving a
    daemon whose sender is gone. Before, the sender was a task of its own and the daemon
    ran on, deaf to it."""

    async def broken_sender(self: Link) -> None:
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(Link, "_send", broken_sender)
    async with SimServer(SimOptions(pace=4)) as sim:
        settings = config.parse({
            "device_id": "t",
            "realtime": {"url": sim.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3},
            "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                      "output": {"file": str(tmp_path / "out.wav")}},
            "control": {"socket": str(tmp_path / "ctl.sock")},
        }, environ={})
        sup = Supervisor(settings, source=WavFileSource(QUESTION_WAV),
                         sink=WavFileSink(tmp_path / "out.wav"))
        task = asyncio.create_task(sup.run())
        try:
            with pytest.raises(BaseExceptionGroup) as caught:
                await asyncio.wait_for(task, TIMEOUT)
        finally:
            sup.request_stop()
        bugs = caught.value.subgroup(lambda e: isinstance(e, RuntimeError))
        assert bugs is not None and [str(e) for e in bugs.exceptions] == ["a bug in the sender"]


@pytest.mark.parametrize(("echo", "grace", "idle_s"), [
    ("aec", None, 0.5), ("aec", 2, 2.0), ("half_duplex", None, 0.5),
    ("full_duplex", None, 0.5), ("full_duplex", 2, 2.0), ("half_duplex", 30, 30.0)])
def test_the_speaker_idles_after_its_grace_under_every_echo_policy(
        echo: str, grace: float | None, idle_s: float | None) -> None:
    """Issue 21 stops the speaker's stream ``audio.speaker_idle_s`` after playback. Under
    ``audio.echo: aec`` too now: the echo canceller holds it awake only while the mic
    listens (tests/test_hands_free.py), so in ``ready`` both streams stop. Before, under
    aec it never stopped."""
    from voiced.audio.pyaudio_backend import PyAudioSink

    audio: dict[str, Any] = {"backend": "pyaudio", "echo": echo,
                             "input": {"device": "default"}, "output": {"device": "default"}}
    if grace is not None:
        audio["speaker_idle_s"] = grace
    settings = config.parse({"realtime": {"url": "ws://127.0.0.1:9/v1/realtime"},
                             "audio": audio}, environ={})
    _, sink = build_audio(settings)
    assert isinstance(sink, PyAudioSink) and sink.idle_s == idle_s
