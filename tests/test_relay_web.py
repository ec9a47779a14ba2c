"""The browser client's HTTP side of `voiced relay`, over raw sockets (no client library
normalises the hostile paths): the static files, their headers, path traversal, and the
two JSON endpoints (auth, other devices' conversations, bad ids, sizes, rate limits)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import relay_rig
from tests.conftest import TIMEOUT
from tests.relay_rig import Client, device_name, relay_in_process
from voiced.errors import ConfigError
from voiced.relay import config as relay_config
from voiced.relay.web import ASSETS, CSP, TRANSCRIPT_MAX_CHARS, TRANSCRIPT_MAX_ROWS
from voiced.sim.server import SimOptions, SimServer

pg = relay_rig.pg  # one PostgreSQL per module


async def http(port: int, target: str, *, method: str = "GET",
               headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request as written (``raw``: the whole request, bytes as given)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if raw is None:
            lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                     *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
            raw = "\r\n".join(lines).encode("latin-1")
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)  # the relay closes after one
    finally:
        writer.close()
    if not data:
        return 0, {}, b""  # closed without an answer (websockets, for unparseable requests)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs: dict[str, str] = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def insert_rows(dsn: str, cid: str, rows: list[tuple[str, str]], *, heard: int | None = None
                ) -> None:
    with psycopg.connect(dsn) as conn:
        for i, (role, content) in enumerate(rows):
            md: dict[str, Any] = {"interrupted": heard is not None and role == "assistant"}
            if heard is not None and role == "assistant":
                md["heard_ms"] = heard
            conn.execute(b"insert into chat_messages_v2 (id, conversation_id, role, content, "
                         b"metadata, created_at) values (%s, %s, %s, %s, %s::jsonb, "
                         b"now() + %s * interval '1 millisecond')",
                         (str(uuid.uuid4()), cid, role, content, json.dumps(md), i))


# ------------------------------------------------------------------ static files


async def test_the_page_and_its_files_are_served_with_strict_headers(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        assert relay.page_url == f"http://127.0.0.1:{relay.port}/app/"
        status, h, body = await http(relay.port, "/app/")
        assert status == 200 and h["content-type"] == "text/html; charset=utf-8"
        page = body.decode()
        # index.html learnt the relay's path and default agent; no inline script or style
        assert '<meta name="voiced-relay-path" content="/v1/realtime">' in page
        assert '<meta name="voiced-agent" content="home">' in page
        assert '<script type="module" src="app.js"></script>' in page
        assert "<style" not in page and " on" not in page.replace(" one", "")
        assert h["content-security-policy"] == CSP
        assert "script-src 'self';" in CSP and "unsafe" not in CSP
        assert "require-trusted-types-for 'script'" in CSP
        for name, header in (("x-content-type-options", "nosniff"),
                             ("referrer-policy", "no-referrer"),
                             ("x-frame-options", "DENY"), ("cache-control", "no-cache")):
            assert h[name] == header, name
        assert h["permissions-policy"].startswith("microphone=(self)")
        assert int(h["content-length"]) == len(body)
        for name, ctype in ASSETS.items():
            status, h2, body2 = await http(relay.port, f"/app/{name}")
            assert (status, h2["content-type"]) == (200, ctype), name
            assert body2 and h2["etag"].startswith('"') and h2["cache-control"] == "no-cache"
        # revalidation: the same ETag is a 304 without a body
        status, h3, body3 = await http(relay.port, "/app/app.js")
        status, h4, body4 = await http(relay.port, "/app/app.js",
                                       headers={"If-None-Match": f'W/"x", {h3["etag"]}'})
        assert (status, body4) == (304, b"") and h4["etag"] == h3["etag"]
        # HEAD: the headers of a GET, no body
        status, h5, body5 = await http(relay.port, "/app/app.js", method="HEAD")
        assert (status, body5) == (200, b"") and h5["content-length"] == h3["content-length"]
        # other methods, and the page's path without its slash
        status, h6, _ = await http(relay.port, "/app/", method="POST")
        assert status == 405 and h6["allow"] == "GET, HEAD"
        status, h7, _ = await http(relay.port, "/app?agent_id=home")
        assert status == 308 and h7["location"] == "/app/?agent_id=home"
        # the relay's own path is still the WebSocket's
        token = await relay.store.add_device(device_name())
        c = await Client.open(relay.url, token)
        await c.wait_for("session.created")
        await c.close()


@pytest.mark.parametrize("target", [
    "/app/../relay/server.py", "/app/%2e%2e/server.py", "/app/..%2fserver.py",
    "/app/%2E%2E%2Fschema.sql", "/app//etc/passwd", "/app/web/index.html",
    "/app/index.html/", "/app/index.html%00", "/app/schema.sql", "/app/web.py",
    "/app/__init__.py", "/app/./app.js", "/app/..\\..\\server.py", "/app/APP.JS",
    "/app/app.js;.html", "/app/%61pp.js", "/app/" + "a" * 4000, "/app/.", "/app/..",
    "/app/~root", "/app/app.js/..", "/app/api", "/app/api/", "/app/api/../index.html",
    "/app/api/agent/../../app.js", "/app/api/nothing",
])
async def test_no_other_file_is_reachable(tmp_path: Path, pg: str, target: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        status, h, body = await http(relay.port, target)
        assert status in (401, 404), (target, status)  # api/...: the token comes first
        assert b"import " not in body and b"def " not in body and b"create table" not in body
        assert h["content-security-policy"] == CSP and h["x-content-type-options"] == "nosniff"


async def test_hostile_requests_get_an_answer_never_a_crash(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        # a request line too long, too many headers; a body or a non-ASCII path: closed
        status, _, _ = await http(relay.port, "/app/" + "a" * 9000)
        assert status == 414
        many = {f"X-H{i}": "1" for i in range(200)}
        status, _, _ = await http(relay.port, "/app/", headers=many)
        assert status == 431
        status, _, _ = await http(relay.port, "", raw=b"POST /app/ HTTP/1.1\r\nHost: x\r\n"
                                                     b"Content-Length: 5\r\n\r\nhello")
        assert status == 0
        status, _, _ = await http(relay.port, "", raw="GET /app/\u00e9 HTTP/1.1\r\nHost: x"
                                  "\r\n\r\n".encode())
        assert status == 0
        status, _, _ = await http(relay.port, "/app/", headers={
            "If-None-Match": ", ".join(['"x"'] * 1500)})
        assert status == 200
        # and the relay still serves
        assert (await http(relay.port, "/app/app.css"))[0] == 200
        assert relay.web.counters["pages"] >= 2


async def test_the_web_path_is_configurable_and_the_page_can_be_turned_off(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, \
            relay_in_process(tmp_path, sim.url, pg, web={"path": "/", "agent_id": "kitchen"},
                             name="root.yaml") as relay:
        status, _, body = await http(relay.port, "/")
        assert status == 200 and b'content="kitchen"' in body
        assert (await http(relay.port, "/voice.js"))[0] == 200
        token = await relay.store.add_device(device_name())
        c = await Client.open(relay.url, token)  # /v1/realtime is the relay's, not a file
        await c.wait_for("session.created")
        await c.close()
    async with SimServer(SimOptions()) as sim, \
            relay_in_process(tmp_path, sim.url, pg, web={"path": None},
                             name="off.yaml") as relay:
        assert relay.page_url is None and relay.web is None
        status, _, body = await http(relay.port, "/app/")
        assert (status, body) == (404, b"no relay at this path\n")


@pytest.mark.parametrize(("web", "problem"), [
    ({"path": "/app"}, "web.path: '/app' is not a URL path ending in /"),
    ({"path": "/a/../b/"}, "web.path: '/a/../b/' is not a URL path ending in /"),
    ({"path": "app/"}, "web.path: 'app/' is not a URL path ending in /"),
    ({"path": 5}, "web.path: '5' is not a URL path ending in /"),
    ({"agent_id": "no spaces"}, "web.agent_id: 'no spaces' must be"),
    ({"nope": 1}, "web.nope: unknown key"),
])
def test_web_settings_are_validated(tmp_path: Path, web: dict[str, Any], problem: str) -> None:
    cfg = relay_rig.relay_config(tmp_path, "ws://127.0.0.1:1/v1/realtime", web=web)
    with pytest.raises(ConfigError) as e:
        relay_config.load(cfg, environ={"VOICED_POSTGRES_DSN": "x"})
    assert problem in str(e.value), str(e.value)


def test_the_web_path_cannot_be_the_relays_own(tmp_path: Path) -> None:
    cfg = relay_rig.relay_config(tmp_path, "ws://127.0.0.1:1/v1/realtime",
                                 server={"path": "/"}, web={"path": "/"})
    with pytest.raises(ConfigError, match=r"web.path: '/' is the relay's own path"):
        relay_config.load(cfg, environ={"VOICED_POSTGRES_DSN": "x"})


# ------------------------------------------------------------------ the JSON endpoints


async def test_the_agent_endpoint_needs_a_live_token(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        name = device_name()
        token = await relay.store.add_device(name)
        status, h, body = await http(relay.port, "/app/api/agent?agent_id=home",
                                     headers=bearer(token))
        assert status == 200 and h["content-type"] == "application/json; charset=utf-8"
        assert h["cache-control"] == "no-store"
        assert json.loads(body) == {"id": "home", "voice": "marin",
                                    "voices": ["marin", "cedar"], "device": name}
        status, h, body = await http(relay.port, "/app/api/agent?agent_id=home")
        assert status == 401 and h["www-authenticate"].startswith("Bearer")
        assert "token is required" in json.loads(body)["error"]
        for bad in ("vrt_nope", "x" * 500):
            status, _, _ = await http(relay.port, "/app/api/agent?agent_id=home",
                                      headers=bearer(bad))
            assert status == 401
        status, _, _ = await http(relay.port, "/app/api/agent?agent_id=home",
                                  headers={"Authorization": f"Basic {token}"})
        assert status == 401
        # the subprotocol is the WebSocket's way; an HTTP request must use the header
        status, _, _ = await http(relay.port, "/app/api/agent?agent_id=home",
                                  headers={"Sec-WebSocket-Protocol": f"voiced-token.{token}"})
        assert status == 401
        for query, code in (("agent_id=nobody", 404), ("agent_id=", 400), ("", 400),
                            ("agent_id=a%20b", 400), ("agent_id=home&agent_id=x", 400),
                            ("&".join(f"p{i}=1" for i in range(20)), 400)):
            status, _, body = await http(relay.port, f"/app/api/agent?{query}",
                                         headers=bearer(token))
            assert status == code, (query, status, body)
            assert "error" in json.loads(body)
        await relay.store.revoke_device(name)
        status, _, body = await http(relay.port, "/app/api/agent?agent_id=home",
                                     headers=bearer(token))
        assert status == 401 and json.loads(body) == {"error": "unknown or revoked device token"}


async def test_a_device_reads_only_its_own_conversations(tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        mine, theirs = device_name(), device_name()
        token = await relay.store.add_device(mine)
        other = await relay.store.add_device(theirs)
        cid, other_cid = str(uuid.uuid4()), str(uuid.uuid4())
        await relay.store.create_conversation(cid, "home", mine)
        await relay.store.create_conversation(other_cid, "home", theirs)
        hostile = "\x1b[31m<script>alert(1)</script>\u202e\U0001f600" + "z" * 20_000
        insert_rows(pg, cid, [("user", "what time is it"), ("assistant", hostile)], heard=640)
        insert_rows(pg, other_cid, [("user", "a secret")])

        status, _, body = await http(relay.port, f"/app/api/conversations/{cid}",
                                     headers=bearer(token))
        assert status == 200
        assert body.isascii()  # escaped JSON: nothing in a row can break the encoding
        got = json.loads(body)
        assert got["conversation_id"] == cid and got["agent_id"] == "home"
        assert got["more"] is False
        user, assistant = got["messages"]
        assert (user["role"], user["content"], user["interrupted"]) == (
            "user", "what time is it", False)
        assert "heard_ms" not in user
        assert assistant["content"] == hostile[:TRANSCRIPT_MAX_CHARS]
        assert (assistant["interrupted"], assistant["heard_ms"]) == (True, 640)
        # someone else's and an unknown one: the same answer, no oracle for ids
        for target in (other_cid, str(uuid.uuid4())):
            status, _, body = await http(relay.port, f"/app/api/conversations/{target}",
                                         headers=bearer(token))
            assert status == 404 and b"a secret" not in body
            assert json.loads(body) == {"error": f"no conversation {target} for this device"}
        # the other device reads its own
        status, _, body = await http(relay.port, f"/app/api/conversations/{other_cid}",
                                     headers=bearer(other))
        assert status == 200 and json.loads(body)["messages"][0]["content"] == "a secret"
        for bad in ("42", "not-a-uuid", f"{cid}/x", f"{cid}x", "%00", "x" * 3000,
                    f"urn:uuid:{cid}", f"{{{cid}}}", "%27%20or%201%3D1%20--", "..%2F..%2Fapp.js"):
            status, _, body = await http(relay.port, f"/app/api/conversations/{bad}",
                                         headers=bearer(token))
            assert status == 400, (bad, status)
        for limit in ("0", "501", "-1", "abc", "1e3", "%D9%A1", "9" * 5000):
            status, _, _ = await http(relay.port, f"/app/api/conversations/{cid}?limit={limit}",
                                      headers=bearer(token))
            assert status == 400, limit
        status, _, _ = await http(relay.port, f"/app/api/conversations/{cid}")
        assert status == 401


async def test_a_long_conversation_is_returned_newest_rows_bounded(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        name = device_name()
        token = await relay.store.add_device(name)
        cid = str(uuid.uuid4())
        await relay.store.create_conversation(cid, "home", name)
        n = TRANSCRIPT_MAX_ROWS + 20
        insert_rows(pg, cid, [("user" if i % 2 else "assistant", f"line {i}") for i in range(n)])
        status, _, body = await http(relay.port, f"/app/api/conversations/{cid}",
                                     headers=bearer(token))
        got = json.loads(body)
        assert status == 200 and got["more"] is True
        contents = [m["content"] for m in got["messages"]]
        assert contents == [f"line {i}" for i in range(n - TRANSCRIPT_MAX_ROWS, n)]
        status, _, body = await http(relay.port, f"/app/api/conversations/{cid}?limit=2",
                                     headers=bearer(token))
        assert [m["content"] for m in json.loads(body)["messages"]] == [
            f"line {n - 2}", f"line {n - 1}"]


async def test_the_endpoints_are_rate_limited_before_the_token_is_looked_up(
        tmp_path: Path, pg: str) -> None:
    now = [1000.0]
    async with SimServer(SimOptions()) as sim, \
            relay_in_process(tmp_path, sim.url, pg, clock=lambda: now[0],
                             limits={"api_requests_per_min": 60, "api_request_burst": 3}) as relay:
        token = await relay.store.add_device(device_name())
        lookups = 0
        real = relay.store.device_for_token

        async def counted(t: str) -> Any:
            nonlocal lookups
            lookups += 1
            return await real(t)

        relay.store.device_for_token = counted
        for _ in range(3):
            assert (await http(relay.port, "/app/api/agent?agent_id=home",
                               headers=bearer("vrt_guess")))[0] == 401
        status, h, _ = await http(relay.port, "/app/api/agent?agent_id=home",
                                  headers=bearer(token))
        assert status == 429 and h["retry-after"] == "1"
        assert lookups == 3  # the fourth never reached the database
        # the static files are not limited (they cost nothing), and time refills
        assert (await http(relay.port, "/app/"))[0] == 200
        now[0] += 1.0
        assert (await http(relay.port, "/app/api/agent?agent_id=home",
                           headers=bearer(token)))[0] == 200


async def test_the_endpoints_say_503_while_the_database_is_not_ready(
        tmp_path: Path, pg: str) -> None:
    async with SimServer(SimOptions()) as sim, relay_in_process(tmp_path, sim.url, pg) as relay:
        token = await relay.store.add_device(device_name())
        relay.db_ready = False
        status, h, _ = await http(relay.port, "/app/api/agent?agent_id=home",
                                  headers=bearer(token))
        assert status == 503 and h["retry-after"] == "5"
        assert (await http(relay.port, "/app/"))[0] == 200  # the page itself still loads
