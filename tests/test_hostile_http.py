"""HTTP peers as an attacker or bad luck meets them: redirects, endless bodies, a token
with a newline, a malformed DSN; and the model's tool arguments.

Every test here failed on 82fde82
(the placeholder values that stayed under the prefix already are kept as guards).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.backends import serve_app
from tests.conftest import TIMEOUT
from tests.test_transcript_delivery import record
from voiced import config
from voiced.config import Secret
from voiced.outbox import Outcome
from voiced.sinks.http import SupabaseSink, WebhookSink
from voiced.sinks.postgres import PostgresSink
from voiced.tools import Tool, Toolbox, ToolError, builtin
from voiced.tools.http import http_tool

TOKEN = "tok-0123456789-secret"


@dataclass
class Peer:
    """An HTTP server on 127.0.0.1 that records what reached it."""

    url: str = ""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # body bytes written per endless reply


@pytest.fixture
async def elsewhere() -> AsyncIterator[Peer]:
    """Another origin: where a redirect points. Nothing may reach it."""
    peer = Peer()

    async def anything(request: web.Request) -> web.Response:
        peer.requests.append((request.method, request.path_qs, dict(request.headers)))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner, peer.url = await serve_app(app)
    yield peer
    await runner.cleanup()


ENDLESS = 64 * 1024 * 1024


@pytest.fixture
async def peer(elsewhere: Peer) -> AsyncIterator[Peer]:
    """The configured peer: redirects to ``elsewhere``, endless bodies, JSON."""
    me = Peer()

    async def handle(request: web.Request) -> web.StreamResponse:
        me.requests.append((request.method, request.path_qs, dict(request.headers)))
        kind = request.path.split("/")[1]
        if kind == "redirect":
            raise web.HTTPTemporaryRedirect(elsewhere.url + "/stolen")
        if kind in ("endless-error", "endless-reply"):
            resp = web.StreamResponse(status=500 if kind == "endless-error" else 200)
            resp.content_type = "application/json"
            await resp.prepare(request)
            sent = 0
            chunk = b"[" + b"1," * 32767 + b"1"
            try:
                while sent < ENDLESS:
                    await resp.write(chunk)
                    sent += len(chunk)
            except (ConnectionError, RuntimeError):
                pass
            me.sent.append(sent)
            return resp
        if kind == "declared-length":
            return web.Response(body=b"{}", headers={"Content-Length": str(ENDLESS)})
        return web.json_response({"ok": True, "path": request.path,
                                  "query": dict(request.query),
                                  "body": await request.text()})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner, me.url = await serve_app(app)
    yield me
    await runner.cleanup()


# ------------------------------------------------------------------ redirects


async def test_a_webhook_redirect_is_not_delivery_and_not_followed(
        peer: Peer, elsewhere: Peer) -> None:
    sink = WebhookSink(peer.url + "/redirect", token=Secret(TOKEN), timeout_s=5)
    result = await sink.deliver(record(1))
    await sink.aclose()
    assert result.outcome is Outcome.RETRY, result
    assert "307" in result.reason and "redirect" in result.reason
    assert elsewhere.requests == []


async def test_a_supabase_redirect_never_carries_the_key_elsewhere(
        peer: Peer, elsewhere: Peer) -> None:
    sink = SupabaseSink(peer.url + "/redirect", key=Secret(TOKEN), timeout_s=5,
                        device_id="k", agent_id=None)
    result = await sink.deliver(record(1))
    await sink.aclose()
    assert result.outcome is Outcome.RETRY
    assert elsewhere.requests == []


def spec(url: str, **kw: Any) -> config.HttpToolSettings:
    return config.HttpToolSettings(**{"name": "t", "description": "d",
                                      "parameters": {"type": "object"}, "url": url, **kw})


async def test_an_http_tool_redirect_never_carries_its_credential_elsewhere(
        peer: Peer, elsewhere: Peer) -> None:
    tool = http_tool(spec(peer.url + "/redirect",
                          headers=(("X-Api-Key", Secret(TOKEN)),)))
    with pytest.raises(ToolError, match="redirect"):
        await tool.call({})
    assert elsewhere.requests == []


# ------------------------------------------------------------------ bodies


async def test_an_endless_webhook_error_body_is_read_only_so_far(peer: Peer) -> None:
    sink = WebhookSink(peer.url + "/endless-error", token=None, timeout_s=30)
    result = await sink.deliver(record(1))
    await sink.aclose()
    assert result.outcome is Outcome.RETRY and result.reason.startswith("HTTP 500")
    await asyncio.sleep(0.1)
    assert peer.sent and peer.sent[0] < ENDLESS // 4, peer.sent  # it stopped reading


async def test_an_endless_tool_reply_is_an_error_not_a_gigabyte(peer: Peer) -> None:
    tool = http_tool(spec(peer.url + "/endless-reply", max_reply_bytes=100_000,
                          timeout_s=30))
    with pytest.raises(ToolError, match="more than 100000 bytes"):
        await tool.call({})
    await asyncio.sleep(0.1)
    assert peer.sent and peer.sent[0] < ENDLESS // 4, peer.sent
    with pytest.raises(ToolError, match="more than 100000 bytes"):
        await http_tool(spec(peer.url + "/declared-length", max_reply_bytes=100_000)).call({})


# ------------------------------------------------------------------ credentials at delivery


async def test_a_token_with_a_newline_is_a_retry_not_a_crash(peer: Peer) -> None:
    """Config refuses it (tests/data/bad-configs); a sink built without config still
    never raises, and never shows the token."""
    for sink in (WebhookSink(peer.url + "/hook", token=Secret(TOKEN + "\nX-Evil: 1"),
                             timeout_s=5),
                 SupabaseSink(peer.url, key=Secret(TOKEN + "\r\n"), timeout_s=5,
                              device_id="k", agent_id=None)):
        result = await sink.deliver(record(1))
        await sink.aclose()
        assert result.outcome is Outcome.RETRY, result
        assert TOKEN not in result.reason
    assert peer.requests == []


async def test_a_malformed_dsn_is_a_config_fault_not_a_record_fault() -> None:
    """libpq's message quotes the part it could not parse (here the password): it never
    reaches the reason, and the record is retried, not parked in rejected/."""
    sink = PostgresSink(Secret("host=127.0.0.1 user=voiced hunter2-secret-pw"), timeout_s=2,
                        device_id="k", agent_id=None)
    result = await sink.deliver(record(1))
    await sink.aclose()
    assert result.outcome is Outcome.RETRY, result
    assert "hunter2" not in result.reason and "connection string" in result.reason


# ------------------------------------------------------------------ tool arguments


async def test_tool_arguments_nested_too_deep_or_too_big_are_answered() -> None:
    async def ok(args: dict[str, Any]) -> Any:
        return {"echo": args}

    box = Toolbox([Tool("ok", "", {"type": "object"}, ok, 1)])
    for arguments in ["[" * 100_000, '{"a": ' + "[" * 5000 + "]" * 5000 + "}",
                      '{"a": "' + "x" * 2_000_000 + '"}']:
        out = json.loads(await box.run("ok", arguments))
        assert out["error"].startswith("invalid arguments"), out
    # half an emoji (a relay cut a surrogate pair): the tool sees U+FFFD, and the output
    # can be encoded for the socket
    out = await box.run("ok", '{"a": "\\ud83d!"}')
    out.encode()
    assert json.loads(out) == {"echo": {"a": "\ufffd!"}}

    async def deep(args: dict[str, Any]) -> Any:
        value: Any = 1
        for _ in range(100_000):
            value = [value]
        return value  # a tool whose result cannot be encoded

    box = Toolbox([Tool("deep", "", {"type": "object"}, deep, 1)])
    assert json.loads(await box.run("deep", "{}")) == {
        "error": "the deep tool failed: RecursionError"}


TRAVERSALS = ["..", ".", "../config", "%2e%2e", "%2E%2E%2Fconfig", "a/b", "a\\..\\b",
              "..%2f", "%252e%252e", "\u2025", "..;", "?x=1", "#frag"]


@pytest.mark.parametrize("value", TRAVERSALS)
async def test_a_placeholder_never_leaves_its_path_prefix(peer: Peer, value: str) -> None:
    tool = http_tool(spec(peer.url + "/api/states/{entity}", parameters={
        "type": "object", "properties": {"entity": {"type": "string"}}}))
    before = len(peer.requests)
    try:
        got = await tool.call({"entity": value})
    except ToolError as e:
        assert "entity" in str(e)
        assert len(peer.requests) == before  # refused before any request
        return
    path = got["path"]
    assert path.startswith("/api/states/") and path.count("/") == 3, path
    assert "/.." not in path and path not in ("/api/states/.", "/api/states/.."), path


async def test_undeclared_arguments_are_not_forwarded(peer: Peer) -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    got = await http_tool(spec(peer.url + "/q", parameters=params)).call(
        {"city": "Bonn", "admin": "true"})
    assert got["query"] == {"city": "Bonn"}
    got = await http_tool(spec(peer.url + "/j", parameters=params, method="POST",
                               send_arguments="json")).call({"city": "Bonn", "admin": 1})
    assert json.loads(got["body"]) == {"city": "Bonn"}


# ------------------------------------------------------------------ device_status


async def test_device_status_never_resolves_names_on_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead resolver blocks getaddrinfo for 10 s or more. It cannot exist on this
    machine without breaking others' DNS, so getaddrinfo is replaced by one that blocks
    until the event loop releases it: on the loop, the loop could never do that."""
    gate = threading.Event()
    released_by_loop: list[bool] = []
    real = socket.getaddrinfo

    def blocking(host: Any, *args: Any, **kw: Any) -> Any:
        if host == "relay.example.com":
            released_by_loop.append(gate.wait(TIMEOUT))
            return real("127.0.0.1", *args, **kw)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", blocking)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(builtin.network_status("wss://relay.example.com/v1/rt"))
    await asyncio.sleep(0.05)
    loop.call_soon(gate.set)
    out = await asyncio.wait_for(task, TIMEOUT)
    assert released_by_loop == [True]
    assert out["address"] == "127.0.0.1"

    # a resolver that never answers: the status still comes, saying so
    gate.clear()
    out = await asyncio.wait_for(builtin.network_status("wss://relay.example.com/v1/rt",
                                                        timeout_s=0.2), TIMEOUT)
    assert out["address"] is None and "did not answer" in out["network_error"]
    gate.set()


def test_a_lookup_that_never_ends_does_not_hold_up_the_exit() -> None:
    """A stop (SIGTERM) while the resolver hangs: the process still exits (a thread
    pool's worker would be joined at exit, past systemd's stop timeout)."""
    import subprocess
    import sys
    import textwrap

    from tests.conftest import REPO

    script = textwrap.dedent(f"""
        import asyncio, socket, sys, threading
        sys.path.insert(0, {str(REPO)!r})
        from voiced.tools import builtin
        socket.getaddrinfo = lambda *a, **k: threading.Event().wait()  # never answers
        out = asyncio.run(builtin.network_status("wss://relay.example.com/x", timeout_s=0.1))
        print(out["network_error"])
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=TIMEOUT, check=False)
    assert p.returncode == 0 and "did not answer" in p.stdout, p.stderr
