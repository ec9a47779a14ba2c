"""Where the daemon connects: ``?model=`` for OpenAI, the relay's parameters for a relay."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from tests.test_supervisor import running
from voiced.config import RealtimeSettings, RelaySettings
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer
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
    assert query(build_url(s, None))[-1] == ("conversation_id", "conv-cfg")
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
            assert q == {"agent_id": "kitchen-agent", "voice": "cedar",
                         "conversation_id": h.sup.status()["conversation_id"]}
