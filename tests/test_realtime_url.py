"""Where the daemon connects: ``?model=`` for OpenAI, the relay's parameters for a relay."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.seed_relay import SeedRelay
from tests.test_supervisor import running
from voiced.config import RealtimeSettings, RelaySettings
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor import connection
from voiced.supervisor.connection import build_url


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def test_openai_gets_the_model_and_keeps_the_urls_own_query() -> None:
    s = RealtimeSettings(url="wss://api.openai.com/v1/realtime?region=eu&model=old",
                         model="gpt-realtime-mini")
    url = build_url(s, conversation_id="conv-1")  # no relay: the id is not sent
    assert url.startswith("wss://api.openai.com/v1/realtime?")
    assert query(url) == [("region", "eu"), ("model", "gpt-realtime-mini")]


def test_a_relay_gets_agent_voice_and_conversation_but_no_model() -> None:
    s = RealtimeSettings(url="wss://relay.example/functions/v1/realtime?tenant=7",
                         model="gpt-realtime-mini", voice="cedar",
                         relay=RelaySettings(agent_id="agent 1", conversation_id="conv-cfg"))
    url = build_url(s, conversation_id="conv-live")
    assert urlsplit(url).path == "/functions/v1/realtime"
    assert query(url) == [("tenant", "7"), ("agent_id", "agent 1"), ("voice", "cedar"),
                          ("conversation_id", "conv-live")]  # the running conversation
    # none running (the relay has not named it yet): none sent, not the configured one,
    # which names only the first conversation (issue 20, R1)
    assert query(build_url(s, None))[-1] == ("voice", "cedar")
    bare = RealtimeSettings(url="wss://relay.example/rt", relay=RelaySettings(agent_id="a"))
    assert query(build_url(bare, None)) == [("agent_id", "a"), ("voice", "marin")]


async def test_the_daemon_connects_with_the_model_it_was_given(tmp_path: Path) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, realtime={"model": "gpt-realtime-mini"}) as h:
            await h.wait(lambda: h.state == State.READY)
            req = sim.sessions[0].ws.request
            assert req is not None
            assert query(req.path) == [("model", "gpt-realtime-mini")]
            assert sim.sessions[0].session["model"] == "gpt-realtime-mini"


async def test_the_daemon_gives_a_relay_its_conversation(tmp_path: Path) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, realtime={
                "relay": {"agent_id": "kitchen-agent"}, "voice": "cedar"}) as h:
            await h.wait(lambda: h.state == State.READY)
            req = sim.sessions[0].ws.request
            assert req is not None
            q = dict(query(req.path))
            # no id configured: none is sent, and the simulator (no relay) names none
            assert q == {"agent_id": "kitchen-agent", "voice": "cedar"}
            assert h.sup.status()["conversation_id"] is None


def test_session_owner_is_the_relays_by_default_and_reaches_the_policy() -> None:
    from voiced.config import parse
    from voiced.supervisor.builders import build_policy

    def policy_for(relay: dict[str, object] | None) -> tuple[bool, str]:
        rt: dict[str, object] = {"url": "ws://127.0.0.1:9/v1/realtime"}
        if relay is not None:
            rt["relay"] = relay
        p = build_policy(parse({"realtime": rt}, require_secrets=False))
        return p.behind_relay, p.session_owner

    assert policy_for(None) == (False, "device")
    assert policy_for({"agent_id": "a"}) == (True, "relay")
    assert policy_for({"agent_id": "a", "session_owner": "device"}) == (True, "device")


async def test_a_relay_that_drops_the_fence_is_given_the_grace_then_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # a relay that forwards the device's session.update but not input_audio_buffer.clear:
    # the session answers, the fence never does; the device waits connect_timeout_s plus
    # the grace, then says why it reconnects (and never takes the session as configured)
    monkeypatch.setattr(connection, "RELAY_GRACE_S", 0.5)
    caplog.set_level(logging.INFO, logger="voiced")
    async with SimServer(SimOptions(pace=4)) as sim, \
            SeedRelay(sim.url, "postgresql://unused", swallow=frozenset(
                {"input_audio_buffer.clear"})) as seed:
        async with running(tmp_path, sim, realtime={
                "url": seed.url, "connect_timeout_s": 1,
                "relay": {"agent_id": "a", "conversation_id": None}}) as h:
            await h.wait(lambda: any("did not pass on the device's session.update and its "
                                     "input_audio_buffer.clear within 1.5 s" in m
                                     for m in caplog.messages))
            assert "waiting up to 0.5 s more" in caplog.text
            assert h.sup.status()["connected"] is False
            # upstream got the relay's own update and the device's, never the clear
            received = [e["type"] for e in sim.sessions[0].received]
            assert received.count("session.update") == 2
            assert "input_audio_buffer.clear" not in received
