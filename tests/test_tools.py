"""Function calling end to end: the daemon against the simulator and a real HTTP service.

The simulated model calls every tool the user names (``SimOptions.transcript`` says what
the user is heard to say), with ``SimOptions.tool_arguments``; after the outputs and a
``response.create`` it speaks "The <tool> tool says: <output>".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import QUESTION_WAV, TIMEOUT
from tests.test_supervisor import Harness, roles, running
from voiced import config
from voiced.core.effects import State
from voiced.errors import ConfigError
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor.daemon import Supervisor
from voiced.tools import Tool, Toolbox, ToolError
from voiced.tools.builtin import builtin_tools
from voiced.tools.http import http_tool

TOKEN = "s3cret-token"


class Service:
    """A home-automation-like JSON service on 127.0.0.1."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], str]] = []
        self.slow_started = asyncio.Event()
        self.slow_cancelled = asyncio.Event()
        self.url = ""

    async def weather(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, str(request.rel_url),
                              dict(request.headers), await request.text()))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorised"}, status=401)
        return web.json_response({"current": {"city": request.match_info["city"],
                                              "temp_c": 21, "sky": "clear"}})

    async def lights(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, str(request.rel_url),
                              dict(request.headers), await request.text()))
        return web.json_response({"ok": True, "got": await request.json()})

    async def slow(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, str(request.rel_url), {}, ""))
        self.slow_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.slow_cancelled.set()
            raise
        return web.json_response({})

    async def broken(self, request: web.Request) -> web.Response:
        return web.Response(status=503, text="maintenance")


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service()
    app = web.Application()
    app.router.add_get("/weather/{city}", svc.weather)
    app.router.add_post("/lights", svc.lights)
    app.router.add_get("/slow", svc.slow)
    app.router.add_get("/broken", svc.broken)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    svc.url = f"http://127.0.0.1:{port}"
    yield svc
    await runner.cleanup()


def tools_config(svc: Service, **builtin: bool) -> dict[str, Any]:
    city = {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"], "additionalProperties": False}
    return {
        "builtin": builtin,
        "timezone": "Europe/Berlin",
        "http": [
            {"name": "weather", "description": "The weather in a city.", "parameters": city,
             "url": svc.url + "/weather/{city}", "reply_path": "current",
             "headers": {"Authorization": "Bearer {credential:weather_token}"}},
            {"name": "lights", "description": "Switch the lights.", "method": "POST",
             "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}},
             "url": svc.url + "/lights"},
            {"name": "slow_thing", "description": "Takes its time.", "url": svc.url + "/slow",
             "timeout_s": 0.5},
            {"name": "patient_thing", "description": "Takes even longer.",
             "url": svc.url + "/slow", "timeout_s": 60},
        ],
    }


ENV = {"VOICED_WEATHER_TOKEN": TOKEN}


@contextlib.asynccontextmanager
async def exchanged(tmp_path: Path, service: Service,
                    opts: SimOptions) -> AsyncIterator[tuple[SimServer, Harness]]:
    """The daemon with the tools of :func:`tools_config`, after one spoken exchange."""
    async with SimServer(opts) as sim:
        async with running(tmp_path, sim, speed=4, environ=ENV,
                           tools=tools_config(service)) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            yield sim, h


def outputs(sim: SimServer) -> dict[str, Any]:
    """Tool name -> parsed function_call_output the daemon sent, over all sessions."""
    out: dict[str, Any] = {}
    for s in sim.sessions:
        names = {i["call_id"]: i["name"] for i in s.items.values()
                 if i.get("type") == "function_call"}
        for i in s.items.values():
            if i.get("type") == "function_call_output":
                out[names[i["call_id"]]] = json.loads(i["output"])
    return out


async def test_a_spoken_request_runs_a_builtin_and_an_http_tool(
        tmp_path: Path, service: Service, user_transcript: str) -> None:
    opts = SimOptions(pace=4, transcript="What is the get_time, and the weather in Zürich?",
                      tool_arguments={"weather": '{"city": "Zürich"}'},
                      user_transcript=user_transcript)
    async with exchanged(tmp_path, service, opts) as (sim, h):
        got = outputs(sim)
        assert got["weather"] == {"city": "Zürich", "temp_c": 21, "sky": "clear"}
        assert set(got["get_time"]) == {"date", "time", "timezone", "iso"}
        assert got["get_time"]["timezone"] == "Europe/Berlin"
        # the URL template encoded the argument; the credential became the header
        method, url, headers, _ = service.requests[0]
        assert (method, url) == ("GET", "/weather/Z%C3%BCrich")
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        reply = h.records[1]["text"]
        assert "The get_time tool says" in reply and "The weather tool says" in reply
        assert "running get_time, weather" in h.details
        assert h.sup.status()["tool_calls"] == 2
        # one response.create for both outputs
        creates = [e for e in sim.sessions[0].received if e["type"] == "response.create"]
        assert len(creates) == 1


async def test_a_post_tool_sends_its_arguments_as_json(tmp_path: Path,
                                                       service: Service) -> None:
    opts = SimOptions(pace=4, transcript="lights on please", tool_arguments={
        "lights": '{"on": true}'})
    async with exchanged(tmp_path, service, opts) as (sim, h):
        assert outputs(sim)["lights"] == {"ok": True, "got": {"on": True}}
        assert service.requests[0][0] == "POST"


async def test_a_tool_that_times_out_is_an_error_the_model_speaks_about(
        tmp_path: Path, service: Service) -> None:
    opts = SimOptions(pace=4, transcript="do the slow_thing")
    async with exchanged(tmp_path, service, opts) as (sim, h):
        assert outputs(sim)["slow_thing"] == {
            "error": "the slow_thing tool did not answer within 0.5 s"}
        assert "did not answer" in h.records[1]["text"]


async def test_invalid_arguments_never_reach_the_service(tmp_path: Path,
                                                         service: Service) -> None:
    opts = SimOptions(pace=4, transcript="weather please",
                      tool_arguments={"weather": '{"city": 5, "extra": 1}'})
    async with exchanged(tmp_path, service, opts) as (sim, h):
        error = outputs(sim)["weather"]["error"]
        assert error.startswith("invalid arguments:"), error
        assert service.requests == []
        assert h.state != State.ERROR


async def test_barge_in_during_a_tool_call_cancels_it(tmp_path: Path,
                                                      service: Service) -> None:
    opts = SimOptions(pace=4, transcript="start the patient_thing")
    async with SimServer(opts) as sim:
        async with running(tmp_path, sim, speed=4, environ=ENV, tools=tools_config(service)) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await asyncio.wait_for(service.slow_started.wait(), 30)
            await h.wait(lambda: h.sup.session.state == State.THINKING)
            h.sup._on_control("press")  # the user interrupts while the tool runs
            await h.wait(lambda: "patient_thing" in outputs(sim))
            assert outputs(sim)["patient_thing"]["error"].startswith("cancelled")
            await asyncio.wait_for(service.slow_cancelled.wait(), 10)  # request aborted
            assert h.sup._tool_tasks == {}
            assert h.sup.status()["mic"] == "on" and h.state == State.LISTENING
            # the cancelled call is not answered with a spoken response
            assert not any(e["type"] == "response.create" for e in sim.sessions[0].received)


async def test_volume_tool_sets_and_persists_the_volume(tmp_path: Path,
                                                        service: Service) -> None:
    opts = SimOptions(pace=4, transcript="set_volume to half",
                      tool_arguments={"set_volume": '{"action": "set", "percent": 50}'})
    async with exchanged(tmp_path, service, opts) as (sim, h):
        assert outputs(sim)["set_volume"] == {"volume_percent": 50}
    assert (tmp_path / "volume").read_text().strip() == "50"  # next to the outbox
    async with SimServer(opts) as sim:
        async with running(tmp_path, sim, speed=4, environ=ENV,
                           tools=tools_config(service)) as h:
            assert h.sup.volume.percent == 50  # a restart keeps it


async def test_end_conversation_starts_a_new_one_after_the_goodbye(
        tmp_path: Path, service: Service) -> None:
    opts = SimOptions(pace=4, transcript="thanks, end_conversation and device_status")
    async with SimServer(opts) as sim:
        async with running(tmp_path, sim, speed=4, environ=ENV, tools=tools_config(service)) as h:
            await h.wait(lambda: h.state == State.READY)
            first = h.sup.status()["conversation_id"]
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            await h.wait(lambda: h.sup.status()["conversation_id"] != first
                         and len(sim.sessions) == 2 and h.sup.session.connected)
            status = outputs(sim)["device_status"]
            assert status["address"] == "127.0.0.1" and status["transcripts_waiting"] >= 0
            assert {r["conversation_id"] for r in h.records} == {first}
            assert not h.sup.status()["mic"] == "on"


async def test_builtins_can_be_switched_off(tmp_path: Path, service: Service) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        cfg = tools_config(service, time=False, volume=False, microphone=False, status=False)
        async with running(tmp_path, sim, speed=4, environ=ENV, tools=cfg) as h:
            await h.wait(lambda: h.state == State.READY)
            declared = [t["name"] for t in sim.sessions[0].session["tools"]]
            assert declared == ["weather", "lights", "slow_thing", "patient_thing"]


# ------------------------------------------------------------------ the toolbox alone


class _Device:
    def volume_percent(self) -> int:
        return 50

    def mute_mic(self) -> None: ...

    def end_conversation(self) -> None: ...

    def set_volume(self, percent: int) -> int:
        return percent

    async def device_status(self) -> dict[str, Any]:
        return {}


def test_config_reserves_exactly_the_builtin_tool_names() -> None:
    """voiced.config keeps its own copy of the names (it must not import the tools package);
    an HTTP tool may take none of them, and a renamed built-in must be renamed there."""
    tools = builtin_tools(config.BUILTIN_TOOLS, _Device(), timezone=None, timeout_s=1)
    assert {t.name for t in tools} == config.BUILTIN_TOOL_NAMES


async def test_device_status_works_with_proc_hidden(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the unit (ProcSubset=pid) /proc/uptime and /proc/net are hidden: the uptime
    comes from CLOCK_BOOTTIME, the Wi-Fi from /sys/class/net/*/wireless."""
    import time

    from voiced.tools import builtin

    hidden = tmp_path / "proc-hidden"
    monkeypatch.setattr(builtin, "_PROC_UPTIME", hidden / "uptime")
    monkeypatch.setattr(builtin, "_PROC_WIRELESS", hidden / "net" / "wireless")
    sys_net = tmp_path / "sys-class-net"
    for name, state, link in (("eth0", "up", None), ("wlan0", "down", None),
                              ("wlan1", "up", "54")):
        (sys_net / name).mkdir(parents=True)
        (sys_net / name / "operstate").write_text(state + "\n")
        if name.startswith("wlan"):
            (sys_net / name / "wireless").mkdir()
        if link is not None:
            (sys_net / name / "wireless" / "link").write_text(link + "\n")
    monkeypatch.setattr(builtin, "_SYS_NET", sys_net)

    uptime = builtin.system_uptime_s()
    assert uptime is not None
    assert abs(uptime - time.clock_gettime(time.CLOCK_BOOTTIME)) <= 2
    net = await builtin.network_status("ws://127.0.0.1:1/v1/realtime")
    assert net["address"] == "127.0.0.1"
    assert net["wifi"] == {"interface": "wlan1", "operstate": "up", "link_quality": 54.0}
    (sys_net / "wlan1" / "operstate").write_text("dormant\n")  # none up: the first one
    assert (await builtin.network_status("ws://127.0.0.1:1"))["wifi"] == {
        "interface": "wlan0", "operstate": "down"}
    # where /proc/net/wireless can be read, it still answers
    (hidden / "net").mkdir(parents=True)
    (hidden / "net" / "wireless").write_text(
        "Inter-| sta-|   Quality\n face | status | link level noise\n"
        " wlan0: 0000   61.  -49.  -256        0      0      0      0      0        0\n")
    assert (await builtin.network_status("ws://127.0.0.1:1"))["wifi"] == {
        "interface": "wlan0", "link_quality": 61.0}


def route_source(address: str) -> str | None:
    """What the kernel says: the source address of the route to ``address``."""
    import shutil
    import subprocess

    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    p = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True,
                       text=True, timeout=TIMEOUT, check=False)
    words = p.stdout.split()
    return words[words.index("src") + 1] if "src" in words else None


async def test_device_status_names_the_route_to_a_server_that_is_not_local() -> None:
    from voiced.tools import builtin

    remote = "192.0.2.77"  # TEST-NET-1: routed like any server, never answers
    net = await builtin.network_status(f"wss://{remote}:8443/v1/realtime")
    want = route_source(remote)
    if want is None:  # a machine with no route out
        assert net["address"] is None and net["network_error"], net
    else:
        assert net["address"] == want and "network_error" not in net, net
    six = await builtin.network_status("ws://[::1]:8765/v1/realtime")  # an IPv6 server
    assert six["address"] == "::1", six
    unknown = await builtin.network_status("wss://no-such-host.invalid/v1/realtime")
    assert unknown["address"] is None and unknown["network_error"], unknown


async def test_device_status_resolves_the_servers_name_off_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default server is a name: a slow resolver must not stop the audio and the
    watchdog. The tool's lookup is held until the loop has shown it still runs."""
    import socket
    import threading

    from voiced.tools import builtin

    asked, release = threading.Event(), threading.Event()
    real = socket.getaddrinfo

    def slow_resolver(host: str, *args: Any, **kw: Any) -> Any:
        if host == "api.openai.com":
            asked.set()
            if not release.wait(TIMEOUT):  # the loop never came back to release it
                raise socket.gaierror(socket.EAI_AGAIN, "held by the test, never released")
            host = "127.0.0.1"
        return real(host, *args, **kw)

    monkeypatch.setattr(builtin.socket, "getaddrinfo", slow_resolver)
    settings = config.parse({
        "realtime": {"url": "wss://api.openai.com/v1/realtime"},
        "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                  "output": {"file": str(tmp_path / "out.wav")}},
        "tools": {"volume_file": str(tmp_path / "volume")}},
        environ={"OPENAI_API_KEY": "sk-test"})
    sup = Supervisor(settings)
    call = asyncio.create_task(sup.toolbox.run("device_status", "{}"))
    await asyncio.wait_for(asyncio.to_thread(asked.wait, TIMEOUT), TIMEOUT)
    assert asked.is_set() and not call.done()
    release.set()  # only reached if the lookup left the loop free
    status = json.loads(await asyncio.wait_for(call, TIMEOUT))
    assert status["address"] == "127.0.0.1", status


async def test_the_toolbox_turns_every_failure_into_an_error_output() -> None:
    async def ok(args: dict[str, Any]) -> Any:
        return {"echo": args}

    async def fails(args: dict[str, Any]) -> Any:
        raise ToolError("the lamp is unreachable")

    async def bug(args: dict[str, Any]) -> Any:
        return 1 / 0

    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    box = Toolbox([Tool("ok", "", schema, ok, 1), Tool("fails", "", schema, fails, 1),
                   Tool("bug", "", schema, bug, 1)])
    assert json.loads(await box.run("ok", '{"n": 2}')) == {"echo": {"n": 2}}
    assert json.loads(await box.run("ok", "")) == {"echo": {}}
    assert json.loads(await box.run("ok", '{"n": 9}')) == {
        "error": "invalid arguments: n must be smaller than or equal to 3"}
    assert json.loads(await box.run("ok", "{not json")) ["error"].startswith(
        "invalid arguments: not JSON")
    assert json.loads(await box.run("ok", "[1]")) == {
        "error": "invalid arguments: expected a JSON object"}
    assert json.loads(await box.run("fails", "{}")) == {"error": "the lamp is unreachable"}
    assert json.loads(await box.run("bug", "{}")) == {
        "error": "the bug tool failed: ZeroDivisionError"}
    assert json.loads(await box.run("nope", "{}")) == {
        "error": "there is no tool named 'nope'"}


async def test_http_tool_failures_are_tool_errors(service: Service) -> None:
    def spec(**kw: Any) -> config.HttpToolSettings:
        return config.HttpToolSettings(**{"name": "t", "description": "d",
                                          "parameters": {"type": "object"}, **kw})

    with pytest.raises(ToolError, match="answered HTTP 503: maintenance"):
        await http_tool(spec(url=service.url + "/broken")).call({})
    with pytest.raises(ToolError, match="answered HTTP 401"):  # no credential header
        await http_tool(spec(url=service.url + "/weather/x")).call({})
    with pytest.raises(ToolError, match="could not be reached"):
        await http_tool(spec(url="http://127.0.0.1:9/none")).call({})
    city = {"type": "object", "properties": {"city": {"type": "string"}}}  # only declared
    tool = http_tool(spec(url=service.url + "/weather/{city}", reply_path="current.nope",
                          parameters=city,  # arguments are sent
                          headers=(("Authorization", config.Secret(f"Bearer {TOKEN}")),)))
    with pytest.raises(ToolError, match="has no 'current.nope'"):
        await tool.call({"city": "x"})
    long = http_tool(spec(url=service.url + "/weather/{city}", max_reply_chars=100,
                          parameters=city,
                          headers=(("Authorization", config.Secret(f"Bearer {TOKEN}")),)))
    got = await long.call({"city": "y" * 300})
    assert got["truncated"] is True and len(got["text"]) == 101


def test_tool_config_errors_name_the_key(tmp_path: Path) -> None:
    raw = {"realtime": {"url": "ws://127.0.0.1:1/v1/realtime"},
           "audio": {"backend": "file", "input": {"file": str(tmp_path / "in.wav")},
                     "output": {"file": str(tmp_path / "out.wav")}},
           "tools": {"timezone": "Mars/Olympus", "builtin": {"time": "yes"}, "http": [
               {"name": "get_time", "description": "x", "url": "http://h/"},
               {"name": "bad name!", "url": "ftp://h/{x}", "parameters": {"type": "array"}},
               {"name": "ok", "description": "x", "url": "https://h/{city}",
                "parameters": {"type": "object", "properties": {"n": {"type": "nonsense"}}},
                "headers": {"Authorization": "Bearer {credential:home_token}"}},
           ]}}
    (tmp_path / "in.wav").write_bytes(b"")
    with pytest.raises(ConfigError) as e:
        config.parse(raw, environ={})
    text = "\n".join(e.value.lines())
    for expected in [
        "tools.timezone: unknown time zone 'Mars/Olympus'",
        "tools.builtin.time: expected true or false",
        "tools.http[0].name: 'get_time' is already the name of another tool",
        "tools.http[1].name: 'bad name!' must be 1-64 letters",
        "tools.http[1].description: is required",
        "tools.http[1].url: 'ftp://h/{x}' is not an http:// or https:// URL",
        "tools.http[1].parameters: must be a JSON schema of type object",
        "tools.http[2].parameters: is not a valid JSON schema",
        "tools.http[2].url: placeholder {city} is not one of the parameters",
        "credentials.home_token: missing: put it in $CREDENTIALS_DIRECTORY/home_token or "
        "$VOICED_HOME_TOKEN (used by tools.http[2].headers.Authorization)",
    ]:
        assert expected in text, (expected, text)
    ok = dict(raw["tools"]["http"][2], parameters={  # type: ignore[index]
        "type": "object", "properties": {"city": {"type": "string"}}})
    settings = config.parse({**raw, "tools": {"http": [ok]}},
                            environ={"VOICED_HOME_TOKEN": "tok-123"})
    assert "tok-123" not in repr(settings)  # the header holds the secret, never shown
    assert settings.tools.http[0].headers[0][1].reveal() == "Bearer tok-123"
