"""Real backends for the transcript tests: a throwaway PostgreSQL, a PostgREST-compatible
shim over it, and a flaky webhook server, all on 127.0.0.1.

PostgreSQL refuses to run as root, so its binaries run as a system user ``pgtest``
(created when missing); our Python stays root and talks to it over TCP.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import REPO

SCHEMA = REPO / "voiced" / "sinks" / "schema.sql"
CALLS: web.AppKey[list[tuple[str, dict[str, str]]]] = web.AppKey("calls", list)


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[str]:
    """Start a PostgreSQL cluster in a directory of its own with the shipped schema; yield
    its DSN.

    The directory is not under pytest's /tmp/pytest-of-<user>: pgtest needs to pass
    through it, and every pytest session starting on this machine (other engineers', a
    second run) sets that directory back to 0700, which locked a running server out of
    its own data directory.
    """
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (scripts/setup.sh test installs it)")
    if subprocess.run(["id", "pgtest"], capture_output=True, check=False).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", "pgtest"], check=True)
    workdir = Path(tempfile.mkdtemp(prefix="voiced-pg-"))  # /tmp itself: 1777
    try:
        shutil.chown(workdir, "pgtest", "pgtest")
        with _cluster(bindir, workdir) as dsn:
            yield dsn
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _cluster(bindir: Path, workdir: Path) -> Iterator[str]:
    data, port = workdir / "data", free_port()

    def as_pg(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "pgtest", "--", *cmd], check=True,
                       capture_output=True, timeout=60)

    as_pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
          "--no-sync", "-E", "UTF8", "--locale=C.UTF-8")
    as_pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "pg.log"), "-w",
          "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {workdir} -c fsync=off "
          "-c synchronous_commit=off -c full_page_writes=off", "start")
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA.read_text())  # type: ignore[call-overload]
        yield dsn
    finally:
        as_pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return list(conn.execute(sql.encode()).fetchall())


# ------------------------------------------------------------------ PostgREST shim


def postgrest_app(dsn: str, key: str) -> web.Application:
    """Enough of PostgREST for the supabase sink: POST /rest/v1/<table> inserts."""
    import psycopg

    app = web.Application()
    app[CALLS] = []

    async def insert(request: web.Request) -> web.Response:
        table = request.match_info["table"]
        app[CALLS].append((table, dict(request.headers)))
        if request.headers.get("apikey") != key or request.headers.get(
                "Authorization") != f"Bearer {key}":
            return web.json_response({"message": "Invalid API key"}, status=401)
        if table not in ("conversations", "chat_messages_v2"):
            return web.json_response({"code": "42P01", "message": f"relation {table} does "
                                      "not exist"}, status=404)
        body = await request.json()
        cols = list(body)
        values = [json.dumps(v) if isinstance(v, dict) else v for v in body.values()]
        ignore = "resolution=ignore-duplicates" in request.headers.get("Prefer", "")
        sql = (f"insert into {table} ({', '.join(cols)}) values "
               f"({', '.join(['%s'] * len(cols))})"
               + (" on conflict do nothing" if ignore else ""))
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(sql.encode(), values)
        except psycopg.errors.UniqueViolation as e:
            return web.json_response({"code": "23505", "message": str(e)}, status=409)
        except psycopg.errors.ForeignKeyViolation as e:
            return web.json_response({"code": "23503", "message": str(e)}, status=409)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
            return web.json_response({"code": "22000", "message": str(e)}, status=400)
        return web.Response(status=201)

    app.router.add_post("/rest/v1/{table}", insert)
    return app


# ------------------------------------------------------------------ flaky webhook


class FlakyWebhook:
    """A webhook that fails like real ones: random 500s, replies slower than the
    client's timeout, dropped connections, and 400 for a poison record.

    ``accepted`` counts 2xx answers per record id; ``seen`` every request.
    """

    def __init__(self, *, seed: int = 1, fail: float = 0.25, slow: float = 0.1,
                 drop: float = 0.1, slow_s: float = 3.0, token: str | None = None,
                 poison: Any = None) -> None:
        self.rng = random.Random(seed)
        self.fail, self.slow, self.drop, self.slow_s = fail, slow, drop, slow_s
        self.token = token
        self.poison = poison or (lambda record: False)
        self.accepted: Counter[str] = Counter()
        self.records: dict[str, dict[str, Any]] = {}
        self.seen: list[tuple[str, str]] = []  # (id, what happened)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        record = await request.json()
        rid = str(record.get("id"))
        if request.headers.get("Idempotency-Key") != rid:
            self.seen.append((rid, "400 no idempotency key"))
            return web.json_response({"error": "Idempotency-Key must be the id"}, status=400)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            self.seen.append((rid, "401"))
            return web.json_response({"error": "bad token"}, status=401)
        if self.poison(record):
            self.seen.append((rid, "400 poison"))
            return web.json_response({"error": "this record is poison"}, status=400)
        roll = self.rng.random()
        if roll < self.fail:
            self.seen.append((rid, "500"))
            return web.json_response({"error": "try later"}, status=500)
        if roll < self.fail + self.drop:
            self.seen.append((rid, "dropped"))
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if roll < self.fail + self.drop + self.slow:
            self.seen.append((rid, "slow"))
            await asyncio.sleep(self.slow_s)  # the client gave up; this one still counts
        self.accepted[rid] += 1
        self.records[rid] = record
        self.seen.append((rid, "200"))
        return web.json_response({"ok": True})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
