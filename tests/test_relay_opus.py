"""Opus between a device and `voiced relay` (in-process, against `voiced sim` and a real
PostgreSQL): the offer and its answers, a spoken exchange whose reply decodes sample for
sample to what upstream sent, truncation, and hostile payloads (refused or concealed,
never fatal)."""

from __future__ import annotations

import base64
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import relay_rig
from tests.relay_rig import (
    QUESTION,
    SILENCE_1S,
    Client,
    device_name,
    eventually,
    messages,
    relay_in_process,
)
from voiced.audio import opus as opus_mod
from voiced.audio.opus import OpusEncoder
from voiced.audio.opus_stream import (
    FRAME,
    HEADER,
    MAX_PACKETS,
    AudioOffer,
    StreamDecoder,
    StreamEncoder,
    pack,
    parse_header,
)
from voiced.sim.server import SimOptions, SimServer

pg = relay_rig.pg
pytestmark = pytest.mark.skipif(not opus_mod.available(),
                                reason="libopus0 is not installed (scripts/setup.sh)")
DELTA = "response.output_audio.delta"


async def opus_client(relay: Any, token: str, offer: str | None) -> Client:
    return await Client.open(relay.url, token,
                             headers={HEADER: offer} if offer else None)


def answer(c: Client) -> str | None:
    assert c.ws.response is not None
    return c.ws.response.headers.get(HEADER)


async def speak_opus(c: Client, enc: StreamEncoder, pcm: bytes) -> int:
    """Stream ``pcm`` as 20 ms binary frames; the number of frames sent."""
    n = 0
    for i in range(0, len(pcm), FRAME * 2):
        for payload in enc.push(pcm[i:i + FRAME * 2]):
            await c.ws.send(payload)
            n += 1
    return n


def decoded_replies(c: Client, pre_skip: int) -> dict[str, bytes]:
    """Each reply item's audio, decoded as a device decodes it (a decoder per item)."""
    out: dict[str, bytes] = {}
    dec = StreamDecoder(pre_skip)
    item = ""
    for e in c.of(DELTA):
        if e["item_id"] != item:
            item, dec = e["item_id"], StreamDecoder(pre_skip)
        out[item] = out.get(item, b"") + dec.feed(base64.b64decode(e["delta"]))
        assert dec.bad_packets == 0
    return out


def upstream_replies(sim: SimServer, index: int = 0) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for e in sim.sessions[index].sent:
        if e["type"] == DELTA:
            out[e["item_id"]] = out.get(e["item_id"], b"") + base64.b64decode(e["delta"])
    return out


def corr(a: bytes, b: bytes, lag: int = 0) -> float:
    x = np.frombuffer(a, "<i2").astype(np.float64)
    y = np.frombuffer(b, "<i2").astype(np.float64)
    n = min(len(x), len(y)) - 400
    x, y = x[200:200 + n], y[200 + lag:200 + lag + n]
    return float(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)))


async def test_an_opus_device_is_heard_and_its_reply_decodes_to_upstreams_samples(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4)) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        plain = await Client.open(relay.url, token)
        assert answer(plain) is None  # no offer, no answer: today's connection
        await plain.close()

        enc = StreamEncoder()
        c = await opus_client(relay, token, AudioOffer(enc.pre_skip).header())
        took = parse_header(answer(c))
        assert took is not None and took.pre_skip == 156
        cid = (await c.wait_for("conversation_created"))["conversation_id"]
        sent = await speak_opus(c, enc, QUESTION + SILENCE_1S)
        heard = (await c.wait_for(
            "conversation.item.input_audio_transcription.completed"))["transcript"]
        await c.wait_for("response.done")
        # pocketsphinx's words shift with its adaptation and the VAD's cut (PCM16 alike:
        # bench/opus_link_bench.py compares both in one run); the key word survives
        assert "weather" in heard, heard
        # upstream got the microphone's samples, less the codec delay still in flight
        up = bytes(sim.sessions[1].appended)
        assert len(up) == sent * FRAME * 2 - enc.pre_skip * 2
        assert corr(QUESTION, up) > 0.8  # lined up: no delay left in the positions
        assert corr(QUESTION, up) > corr(QUESTION, up, 156) + 0.3

        # the reply: per item, exactly upstream's samples, lined up at lag 0
        mine, theirs = decoded_replies(c, took.pre_skip), upstream_replies(sim, 1)
        assert mine.keys() == theirs.keys() and mine
        for item, pcm in theirs.items():
            assert len(mine[item]) == len(pcm)
            assert corr(pcm, mine[item]) > 0.8
            assert corr(pcm, mine[item]) > corr(pcm, mine[item], took.pre_skip) + 0.3
        # Opus deltas are a small fraction of the PCM16 ones
        opus_chars = sum(len(e["delta"]) for e in c.of(DELTA))
        pcm_chars = sum(len(e["delta"]) for e in sim.sessions[1].sent if e["type"] == DELTA)
        assert opus_chars * 8 < pcm_chars

        # a truncation at a position the device counted in decoded samples
        (item,) = mine
        heard_ms = len(mine[item]) // 2 // 24 // 2
        await c.send({"type": "conversation.item.truncate", "item_id": item,
                      "content_index": 0, "audio_end_ms": heard_ms})
        await c.wait_for("conversation.item.truncated")
        await eventually(lambda: any(r[3].get("heard_ms") == heard_ms
                                     for r in messages(pg, cid) if r[1] == "assistant"))
        await c.close()


async def test_offers_the_relay_cannot_take_fall_back_to_pcm16(tmp_path: Path,
                                                                pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="hello")) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        for offer in ("opus; rate=48000; frame_ms=20; pre_skip=156",
                      "opus; rate=24000; frame_ms=40; pre_skip=156",
                      "opus; rate=24000; frame_ms=20; pre_skip=99999",
                      "opus; rate=24000; frame_ms=20; pre_skip=1; pre_skip=2",
                      "opus; rate=24000; frame_ms=20", "vorbis", "x" * 300,
                      "opus; rate=24000; frame_ms=20; pre_skip=156; extra=1"):
            c = await opus_client(relay, token, offer)
            assert answer(c) == "pcm16", offer
            await c.wait_for("session.created")
            await c.ws.send(b"\x00\x00\x01\x00")  # binary means nothing on PCM16
            err = await c.wait_for("error")
            assert "binary" in err["error"]["message"]
            await c.speak(SILENCE_1S, b"")  # and PCM16 goes on as before
            await c.close()


async def test_audio_opus_false_in_relay_yaml_declines_every_offer(tmp_path: Path,
                                                                   pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="hello")) as sim, \
            relay_in_process(tmp_path, sim.url, pg, audio={"opus": False}) as relay:
        assert relay.settings.audio.opus is False
        token = await relay.store.add_device(device_name())
        c = await opus_client(relay, token, AudioOffer(156).header())
        assert answer(c) == "pcm16"  # heard, and declined
        await c.wait_for("session.created")
        assert next(iter(relay.bridges)).codec is None
        await c.speak(SILENCE_1S, b"")  # PCM16 as before
        await c.close()


@pytest.mark.parametrize(("audio", "problem"), [
    ({"opus": "no"}, "audio.opus: expected true or false, got a string"),
    ({"opus": 0}, "audio.opus: expected true or false"),
    ({"opus": None}, "audio.opus: expected true or false"),
    ({"codec": "opus"}, "audio.codec: unknown key"),
])
def test_the_relays_audio_section_is_validated_strictly(tmp_path: Path, audio: Any,
                                                         problem: str) -> None:
    from voiced.errors import ConfigError
    from voiced.relay import config as relay_config

    cfg = relay_rig.relay_config(tmp_path, "ws://127.0.0.1:1/v1/realtime", audio=audio)
    with pytest.raises(ConfigError) as e:
        relay_config.load(cfg, environ={"VOICED_POSTGRES_DSN": "x"})
    assert problem in str(e.value), str(e.value)
    ok = relay_rig.relay_config(tmp_path, "ws://127.0.0.1:1/v1/realtime", name="ok.yaml")
    assert relay_config.load(ok, environ={"VOICED_POSTGRES_DSN": "x"}).audio.opus is True


async def test_hostile_payloads_are_refused_or_concealed_and_positions_hold(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript="hello")) as sim, \
            relay_in_process(tmp_path, sim.url, pg, limits={"bad_frames_burst": 40}) as relay:
        token = await relay.store.add_device(device_name())
        enc = StreamEncoder()
        c = await opus_client(relay, token, AudioOffer(enc.pre_skip).header())
        await c.wait_for("session.created")
        good = enc.push(bytes(FRAME * 2))[0]
        packet = good[3:]
        malformed = [b"", b"\x02" + good[1:], b"\x01\x00", b"\x00\x00\x00",
                     b"\x00\x05\x00" + b"x" * 1300, b"\x00\x00\x10ab",
                     pack([packet] * (MAX_PACKETS + 1)), pack([packet], keep=FRAME + 1)]
        for m in malformed:
            await c.ws.send(m)
        await c.wait(lambda: len(c.of("error")) == len(malformed))
        assert {e["error"]["code"] for e in c.of("error")} == {"invalid_audio"}
        # packets that parse but are not one 20 ms frame, or garbage: concealed
        ten_ms = OpusEncoder(frame_ms=10).encode(bytes(480))
        forty_ms = OpusEncoder(frame_ms=40).encode(bytes(1920))
        bad = [pack([b"\xff" * 40]), pack([ten_ms]), pack([forty_ms]), pack([b"\x03"])]
        for b in bad:
            await c.ws.send(b)
        await c.ws.send(good)
        await c.ws.send(pack([packet, packet]))
        bridge = next(iter(relay.bridges))
        await eventually(lambda: len(sim.sessions[0].appended) ==
                         (len(bad) + 3) * FRAME * 2 - enc.pre_skip * 2)
        assert bridge.codec.bad_packets == len(bad)
        assert bridge.codec.bad_payloads == len(malformed)
        assert c.closed is None
        await c.close()


def test_the_header_round_trips_and_refuses_what_is_not_the_one_form() -> None:
    assert parse_header(AudioOffer(156).header()) == AudioOffer(156)
    assert parse_header("OPUS;rate=24000;frame_ms=20;pre_skip=0") == AudioOffer(0)
    for bad in (None, "", "pcm16", "opus", "opus; rate=24000; frame_ms=20; pre_skip=-1",
                "opus; rate=24000; frame_ms=20; pre_skip=1e3",
                "opus; rate=24000; frame_ms=20; pre_skip=961"):
        assert parse_header(bad) is None, bad


def test_a_stream_decodes_to_exactly_what_was_pushed_in_any_pieces() -> None:
    rng = np.random.default_rng(7)
    x = (np.sin(np.arange(24_000 * 3) / 9) * 9000).astype("<i2").tobytes()
    for run in range(3):
        enc = StreamEncoder()
        dec = StreamDecoder(enc.pre_skip)
        out, i = b"", 0
        while i < len(x):
            n = int(rng.integers(1, 3000)) * 2
            for p in enc.push(x[i:i + n]):
                out += dec.feed(p)
            i += n
        end = enc.end()
        assert end is not None
        out += dec.feed(end)
        assert len(out) == len(x), run
        assert corr(x, out) > 0.9
        # the decoder starts a new stream after END: a second one lines up as well
        assert enc.end() is None
    for p in enc.push(x[:9600]):
        out = dec.feed(p)
    end = enc.end()
    assert end is not None and len(out + dec.feed(end)) >= 0
    assert struct.unpack(">BH", end[:3])[0] == 1


@pytest.mark.timeout(120)
async def test_the_daemon_talks_opus_through_voiced_relay(tmp_path: Path, pg: str) -> None:
    from tests.relay_rig import add_device, relay_config, relay_process
    from tests.test_relay_processes import device, exchange, new_conversation

    async with SimServer(SimOptions(pace=4)) as sim:
        cfg = relay_config(tmp_path, sim.url)
        name = device_name()
        token = await add_device(cfg, pg, name)
        async with relay_process(cfg, pg, tmp_path / "relay.log") as relay:
            cid = await new_conversation(relay.url, token)
            async with device(tmp_path, relay.url, name, token, conversation_id=cid,
                              audio_codec="opus") as (dcfg, proc):
                records = await exchange(dcfg, tmp_path, 2)
            assert proc.returncode == 0
            assert "Traceback" not in relay.log()
        log = (tmp_path / "device.log").read_text()
        assert "the relay took Opus (its codec delay: 156 samples)" in log, log[-2000:]
        assert [r["role"] for r in records] == ["user", "assistant"]
        # the recogniser heard the microphone's words through device → relay → sim
        assert "weather" in records[0]["text"], records[0]["text"]
        assert [r[2] for r in messages(pg, cid)] == [r["text"] for r in records]
        up = sim.sessions[-1]
        assert len(up.appended) > 48_000  # seconds of decoded microphone audio


async def test_the_device_falls_back_to_pcm16_and_drops_bad_reply_audio(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import write_config
    from voiced import config, opus_link
    from voiced.link import open_connection

    async with SimServer(SimOptions(pace=4)) as sim:  # a server that predates Opus
        rt = config.load(write_config(tmp_path, sim.url, realtime={
            "relay": {"agent_id": "home", "audio_codec": "opus"}}),
            environ={"OPENAI_API_KEY": "k"}).realtime
        headers = opus_link.offer_headers(rt)
        assert parse_header(headers[HEADER]) == AudioOffer(156)
        ws = await open_connection(sim.url, "k", timeout_s=5, user_agent="t",
                                   extra_headers=headers)
        with caplog.at_level("INFO"):
            assert opus_link.negotiated(ws) is None
        assert "did not answer the Opus offer" in caplog.text
        await ws.close()
    link = opus_link.LinkCodec(AudioOffer(156))
    for bad in (b"", b"\x07", b"\x00\x00\x00"):
        frame = (
            '{"type":"response.output_audio.delta","item_id":"i","response_id":"r",'
            f'"content_index":0,"delta":"{base64.b64encode(bad).decode()}"}}')
        out = link.incoming(frame)
        assert isinstance(out, str) and '"delta":""' in out  # nothing played, no garbage
    assert link.bad_payloads == 3
    assert link.incoming('{"type":"response.done"}') == '{"type":"response.done"}'


# ------------------------------------------------ the daemon's own truncations, in Opus


def _lag(out: bytes, reply: bytes, n: int) -> int:
    """Where in ``out`` (samples) the first ``n`` samples of ``reply`` lie best."""
    x = np.frombuffer(out, "<i2").astype(np.float64)
    y = np.frombuffer(reply, "<i2")[:n].astype(np.float64)
    size = 1 << int(len(x) + len(y)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    return int(np.argmax(xc[:len(x) - len(y) + 1]))


@pytest.mark.parametrize("how", ["button", "voice"])
async def test_the_daemons_own_truncation_in_opus_is_at_the_played_sample(
        tmp_path: Path, pg: str, how: str) -> None:
    """A button interrupt, or the user speaking over the reply (full duplex, upstream's
    VAD): the speaker's count at the stop is the truncation's audio_end_ms upstream, the
    device's heard_ms and the relay row's heard_ms, and the samples played are
    upstream's first ones (the codec delay is not in the count: no shift)."""
    from tests.conftest import QUESTION_WAV
    from tests.test_relay_processes import new_conversation
    from tests.test_supervisor import played_at_stop, roles, running, stops
    from voiced.audio.filebackend import WavFileSink, WavFileSource
    from voiced.core.effects import State

    async with SimServer(SimOptions(pace=1)) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        cid = await new_conversation(relay.url, token)
        source = WavFileSource(QUESTION_WAV)
        async with running(tmp_path, sim, source=source,
                           environ={"OPENAI_API_KEY": token},
                           realtime={"url": relay.url, "relay": {
                               "agent_id": "home", "conversation_id": cid,
                               "audio_codec": "opus"}},
                           audio={"echo": "full_duplex" if how == "voice"
                                  else "half_duplex"}) as h:
            await h.wait(lambda: h.state == State.READY)
            assert h.sup.connections.live is not None
            assert h.sup.connections.live.codec is not None  # Opus was taken
            speaker = h.sup.sink
            assert isinstance(speaker, WavFileSink)
            counts = stops(speaker)
            h.sup._on_control("press")
            await h.wait(lambda: h.state == State.SPEAKING)
            await h.wait(lambda: max(speaker._played.values(), default=0) >= 12_000)
            if how == "button":
                h.sup._on_control("interrupt")
            else:
                source._pos = 0  # the user speaks again over the reply
            await h.wait(lambda: bool(counts))
            await h.wait(lambda: roles(h)[:2] == ["user", "assistant"])
            up = sim.sessions[-1]
            await eventually(lambda: any(e["type"] == "conversation.item.truncate"
                                         for e in up.received))
            truncate = next(e for e in up.received
                            if e["type"] == "conversation.item.truncate")
            played = played_at_stop(counts, truncate["item_id"])
            md = h.records[1]["metadata"]
            assert md["interrupted"] is True
            assert truncate["audio_end_ms"] == md["heard_ms"] == played * 1000 // 24_000
            assert md["heard_ms"] >= 500
            await eventually(lambda: any(
                r[1] == "assistant" and r[3].get("heard_ms") == md["heard_ms"]
                for r in messages(pg, cid)))
            reply = upstream_replies(sim, len(sim.sessions) - 1)[truncate["item_id"]]
            assert len(reply) > 2 * played  # it really was cut
    with wave.open(str(tmp_path / "out.wav"), "rb") as w:
        out = w.readframes(w.getnframes())
    # the played samples are upstream's first ones (found by cross-correlation), and
    # the speaker went silent right where they end: a shift by the codec delay (156
    # samples) either way would show as sound past that point or silence before it
    at = _lag(out, reply, played)
    assert corr(out[2 * at:2 * (at + played)], reply[:2 * played]) > 0.9
    sound = np.flatnonzero(np.frombuffer(out[:2 * (at + played + FRAME)], "<i2"))
    assert abs(int(sound[-1]) + 1 - (at + played)) <= 2, (int(sound[-1]) + 1, at + played)


async def test_the_hour_rollover_in_opus_keeps_every_sample_and_position(
        tmp_path: Path, pg: str) -> None:
    """An exchange, the session's 60 minutes running out (the sim's and the daemon's
    clock is the test's), the next session through the relay in Opus too: every
    microphone sample the daemon sent reached upstream (the retired link ends its Opus
    stream; the live one holds only its encoder's in-flight samples), and an interrupt
    in the new session truncates at the played sample."""
    from tests.test_relay_processes import new_conversation
    from tests.test_supervisor import played_at_stop, roles, running, stops
    from voiced.audio.filebackend import WavFileSink
    from voiced.core.effects import State
    from voiced.opus_link import LinkCodec
    from voiced.sim.server import ManualClock

    clock = ManualClock()
    margin = 300
    async with SimServer(SimOptions(pace=2), clock=clock) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        cid = await new_conversation(relay.url, token)
        first = len(sim.sessions)
        async with running(tmp_path, sim, wall_clock=clock.time,
                           environ={"OPENAI_API_KEY": token},
                           realtime={"url": relay.url, "rollover_margin_s": margin,
                                     "relay": {"agent_id": "home", "conversation_id": cid,
                                               "audio_codec": "opus"}}) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            old = sim.sessions[-1]
            clock.advance_to(old.expires_at - margin * 0.8)
            await h.wait(lambda: len(sim.sessions) == first + 2 and old.ended_at is not None
                         and h.sup.session.connected and h.sup.session.standby is None)
            live = h.sup.connections.live
            assert live is not None and isinstance(live.codec, LinkCodec)
            assert not old.expired
            # every sample sent reached a session, less only what the live encoder holds
            await h.wait(lambda: h.sup.session.counters.appended_samples
                         == sum(len(s.appended) for s in sim.sessions[first:]) // 2
                         + live.codec.encoder.in_flight)
            # an interrupt in the new session, at the played sample
            speaker = h.sup.sink
            assert isinstance(speaker, WavFileSink)
            counts = stops(speaker)
            if h.sup.session.mic_on:  # still listening for a follow-up: stop that first
                h.sup._on_control("press")
            assert h.state == State.READY
            # the first session's reply is still in the speaker's counts: wait on the new one
            earlier = set(speaker._played)
            h.sup._on_control("press")
            await h.wait(lambda: h.state == State.SPEAKING)
            await h.wait(lambda: max((n for item, n in speaker._played.items()
                                      if item not in earlier), default=0) >= 12_000)
            h.sup._on_control("interrupt")
            await h.wait(lambda: len(roles(h)) == 4)
            new = sim.sessions[-1]
            await eventually(lambda: any(e["type"] == "conversation.item.truncate"
                                         for e in new.received))
            truncate = next(e for e in new.received
                            if e["type"] == "conversation.item.truncate")
            played = played_at_stop(counts, truncate["item_id"])
            md = h.records[3]["metadata"]
            assert truncate["audio_end_ms"] == md["heard_ms"] == played * 1000 // 24_000
            assert md["heard_ms"] >= 500  # half a second of the new reply had played
            await eventually(lambda: any(
                r[1] == "assistant" and r[3].get("heard_ms") == md["heard_ms"]
                for r in messages(pg, cid)))
            # the relay's rows are the daemon's records, in order, across the rollover
            assert [r[2] for r in messages(pg, cid)] == [r["text"] for r in h.records]


def _input_at(session: Any, t: str) -> int:
    """Samples of input audio upstream had when the device's last ``t`` event came."""
    return int([e for e in session.received if e["type"] == t][-1]["input_bytes"]) // 2


def _clears(session: Any) -> int:
    """How many input_audio_buffer.clear the device sent (behind a relay the first fences
    its session.update)."""
    return sum(e["type"] == "input_audio_buffer.clear" for e in session.received)


@pytest.mark.parametrize("turns", ["none", "server_vad"])
async def test_the_devices_own_commit_and_clear_end_its_opus_stream_exactly(
        tmp_path: Path, pg: str, turns: str) -> None:
    """Push to talk (turn_detection none): the device's commit comes after an END, so
    upstream commits every sample the device sent. Server VAD, the mic switched off
    mid-sentence: the device's clear resets both ends, so the next stream loses and
    gains nothing (a side that did not reset would be 156 samples out)."""
    from tests.test_relay_processes import new_conversation
    from tests.test_supervisor import running
    from voiced.core.effects import State
    from voiced.opus_link import LinkCodec

    async with SimServer(SimOptions(pace=4)) as sim, \
            relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        cid = await new_conversation(relay.url, token)
        async with running(tmp_path, sim, environ={"OPENAI_API_KEY": token},
                           realtime={"url": relay.url, "turn_detection": {"type": turns},
                                     "relay": {"agent_id": "home", "conversation_id": cid,
                                               "audio_codec": "opus"}}) as h:
            await h.wait(lambda: h.state == State.READY)
            live = h.sup.connections.live
            assert live is not None and live.codec is not None
            up = sim.sessions[-1]
            counters = h.sup.session.counters
            if turns == "server_vad":
                h.sup._on_control("press")
                await h.wait(lambda: h.sup.session.uplink.speech_active)
                fences = _clears(up)
                h.sup._on_control("press")  # off mid-sentence: the half utterance dropped
                before = counters.appended_samples
                await eventually(lambda: _clears(up) > fences)
            h.sup._on_control("press")
            await h.wait(lambda: counters.appended_samples >= len(QUESTION) // 2
                         + (before if turns == "server_vad" else 0))
            if turns == "none":
                h.sup._on_control("press")  # the end of the turn: commit, respond
                sent = counters.appended_samples
                await eventually(lambda: any(e["type"] == "input_audio_buffer.commit"
                                             for e in up.received))
                assert _input_at(up, "input_audio_buffer.commit") == sent
            else:
                await eventually(lambda: any(e["type"] == "input_audio_buffer.committed"
                                             for e in up.sent))
                h.sup._on_control("interrupt")
                await h.wait(lambda: not h.sup.session.mic_on or h.state == State.SPEAKING)
                if h.sup.session.mic_on and h.state != State.SPEAKING:
                    h.sup._on_control("press")
                codec = live.codec
                assert isinstance(codec, LinkCodec)
                clear = _input_at(up, "input_audio_buffer.clear")
                assert clear <= before  # the half utterance's tail went nowhere
                await h.wait(lambda: len(up.appended) // 2 - clear
                             + codec.encoder.in_flight == counters.appended_samples - before)
            heard = await _user_transcript(h)
            assert "weather" in heard, heard


async def _user_transcript(h: Any) -> str:
    await h.wait(lambda: any(r["role"] == "user" for r in h.records))
    return str(next(r for r in h.records if r["role"] == "user")["text"])
