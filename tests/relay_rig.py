"""What the relay tests and the relay benchmark share: a scripted device client, a tiny
TCP load balancer, relay configs, and a running relay (in-process or as `voiced relay`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env, voiced_cmd
from voiced.audio.filebackend import read_wav_as_wire

FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16
_names = iter(range(1_000_000))


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One PostgreSQL per test module, with the seed's schema (the relay adds its own)."""
    from tests.backends import postgres

    with postgres() as dsn:
        yield dsn


def device_name() -> str:
    """A device name no other test of the run uses (the database is shared)."""
    return f"dev{next(_names)}"


def messages(dsn: str, cid: str) -> list[tuple[Any, ...]]:
    """(id, role, content, metadata) of a conversation's rows, oldest first."""
    from tests.backends import rows

    return rows(dsn, "select id::text, role, content, metadata from chat_messages_v2 "
                     f"where conversation_id = '{cid}' order by created_at")
QUESTION = read_wav_as_wire(QUESTION_WAV)
SILENCE_1S = bytes(48_000)


# ------------------------------------------------------------------ a scripted device


class Client:
    """A device speaking the GA dialect to a relay, scripted by a test."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []
        self.closed: ConnectionClosed | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._seq = 0

    @classmethod
    async def open(cls, url: str, token: str | None, *, agent_id: str = "home",
                   voice: str | None = None, conversation_id: str | None = None,
                   subprotocol_token: bool = False, headers: dict[str, str] | None = None,
                   **kw: Any) -> Client:
        query: dict[str, str] = {"agent_id": agent_id}
        if voice:
            query["voice"] = voice
        if conversation_id:
            query["conversation_id"] = conversation_id
        headers = dict(headers or {})
        protocols = None
        if token and subprotocol_token:
            protocols = ["voiced-relay", f"voiced-token.{token}"]
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        ws = await connect(f"{url}?{urlencode(query)}", additional_headers=headers,
                           subprotocols=protocols, open_timeout=TIMEOUT,  # type: ignore[arg-type]
                           max_size=16 << 20, compression=None, **kw)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                self.events.append(json.loads(frame))
                self.arrived.append(time.monotonic())
                self._changed.set()
        except ConnectionClosed as e:
            self.closed = e
        self.closed = self.closed or self.ws.protocol.close_exc
        self._changed.set()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait(self, pred: Callable[[], bool], within_s: float = TIMEOUT) -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                if self.closed is not None and not pred():
                    raise AssertionError(f"closed ({self.closed}) before the condition; "
                                         f"got {self.types()[-12:]}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.1)
        await asyncio.wait_for(loop(), within_s)

    async def wait_for(self, kind: str, n: int = 1, within_s: float = TIMEOUT) -> dict[str, Any]:
        await self.wait(lambda: len(self.of(kind)) >= n, within_s)
        return self.of(kind)[n - 1]

    async def send(self, event: dict[str, Any]) -> None:
        self._seq += 1
        await self.ws.send(json.dumps({"event_id": f"dev_{self._seq}", **event}))

    async def speak(self, pcm: bytes = QUESTION, tail: bytes = SILENCE_1S) -> None:
        """Stream ``pcm`` then ``tail`` as 20 ms appends (as fast as the socket takes)."""
        data = pcm + tail
        for i in range(0, len(data), FRAME_BYTES):
            await self.send({"type": "input_audio_buffer.append",
                             "audio": base64.b64encode(data[i:i + FRAME_BYTES]).decode()})

    async def close(self) -> None:
        await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, TIMEOUT)


# ------------------------------------------------------------------ a TCP load balancer


class Balancer:
    """The simplest TCP load balancer: round robin over backends, skipping dead ones."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._next = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.picked: list[int] = []  # the backend index of each connection
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            i = self._next % len(self.backends)
            self._next += 1
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*self.backends[i]), 2)
                self.picked.append(i)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_r, up_w = upstream

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

        tasks = [asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))]
        self._pipes.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.difference_update(tasks)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self._pipes):
                t.cancel()
            await self.server.wait_closed()


# ------------------------------------------------------------------ relay configs


AGENT: dict[str, Any] = {
    "id": "home", "instructions": "RELAY-OWNED INSTRUCTIONS", "voice": "marin",
    "voices": ["marin", "cedar"], "model": "gpt-realtime-2.1-mini",
    "transcription": {"model": "gpt-4o-mini-transcribe"},
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
    "tools": [{"name": "get_time", "description": "The time.",
               "parameters": {"type": "object", "properties": {}}}],
}


def relay_config(tmp_path: Path, upstream_url: str, *, name: str = "relay.yaml",
                 **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "upstream": {"url": upstream_url, "connect_timeout_s": 5},
        "spool": {"dir": str(tmp_path / f"{name}.spool"), "retry_max_s": 1},
        "agents": [AGENT],
    }
    for k, v in overrides.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def relay_env(dsn: str, **extra: str) -> dict[str, str]:
    return clean_env(VOICED_POSTGRES_DSN=dsn, **extra)


async def add_device(cfg: Path, dsn: str, name: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("relay", "add-device", name, "-c", str(cfg)), env=relay_env(dsn),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


class RelayProcess:
    """`voiced relay` as a subprocess; ``url`` once it listens."""

    def __init__(self, cfg: Path, dsn: str, log: Path) -> None:
        self.cfg, self.dsn, self.log_path = cfg, dsn, log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.port = 0

    async def start(self, **env: str) -> RelayProcess:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("relay", "-c", str(self.cfg)), env=relay_env(self.dsn, **env),
            stdout=asyncio.subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        m = re.search(r"listening on (ws://[\d.]+:(\d+)\S*)", line.decode())
        assert m, f"{line!r}; log: {self.log()[-2000:]}"
        self.url, self.port = m.group(1), int(m.group(2))
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.asynccontextmanager
async def relay_process(cfg: Path, dsn: str, log: Path, **env: str
                        ) -> AsyncIterator[RelayProcess]:
    r = RelayProcess(cfg, dsn, log)
    try:
        yield await r.start(**env)
    finally:
        await r.stop()


@contextlib.asynccontextmanager
async def relay_in_process(tmp_path: Path, upstream_url: str, dsn: str, *,
                           name: str = "relay.yaml", clock: Callable[[], float] | None = None,
                           **overrides: Any) -> AsyncIterator[Any]:
    """A RelayServer in this process (the same code `voiced relay` runs), ready."""
    from voiced.outbox import Outbox
    from voiced.relay.config import load
    from voiced.relay.server import RelayServer
    from voiced.relay.store import Store

    settings = load(relay_config(tmp_path, upstream_url, name=name, **overrides),
                    environ={"VOICED_POSTGRES_DSN": dsn})
    store = Store(settings.database)
    await store.open()
    spool = Outbox(settings.spool.dir, store, retry_min_s=0.05,
                   retry_max_s=settings.spool.retry_max_s)
    spool.open()
    relay = RelayServer(settings, store, spool, **({"clock": clock} if clock else {}))
    await relay.start()
    await store.prepare(settings.agents)
    relay.db_ready = True
    delivery = asyncio.create_task(spool.run())
    try:
        yield relay
    finally:
        await relay.aclose()
        delivery.cancel()
        await asyncio.gather(delivery, return_exceptions=True)
        await spool.aclose()
        await store.aclose()


async def eventually(pred: Callable[[], bool], within_s: float = TIMEOUT,
                     every_s: float = 0.05) -> None:
    """Wait until ``pred()`` holds (polled), at most ``within_s``."""
    async def loop() -> None:
        while True:
            if pred():
                return
            await asyncio.sleep(every_s)
    await asyncio.wait_for(loop(), within_s)
