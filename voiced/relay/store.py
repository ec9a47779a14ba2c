"""The relay's one store adapter: PostgreSQL through a psycopg connection pool.

Devices (token hashes), agents, conversations and their messages. Every call is
bounded by ``database.timeout_s`` and raises :class:`StoreUnavailable` for anything the
database or the network did, so the server can answer 503 or spool instead.

:meth:`Store.deliver` makes the store the spool's sink (``voiced.outbox.Sink``): a
record spooled while the database was away is written the same idempotent way later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from voiced.errors import BackendError, ConfigError
from voiced.outbox import Outcome, Result
from voiced.relay import auth
from voiced.relay.config import Agent, DatabaseSettings, agent_from_row
from voiced.relay.ledger import Annotate, Insert, Write
from voiced.sinks import message_row

logger = logging.getLogger(__name__)

SEED_SCHEMA: Final = Path(__file__).resolve().parent.parent / "sinks" / "schema.sql"
RELAY_SCHEMA: Final = Path(__file__).resolve().parent / "schema.sql"
_SCHEMA_LOCK: Final = 0x766F6963  # pg_advisory_xact_lock key ("voic")

_INSERT_MESSAGE: Final = b"""
insert into chat_messages_v2 (id, conversation_id, role, content, metadata, created_at)
values (%s, %s, %s, %s, %s::jsonb, %s) on conflict (id) do nothing"""
_ANNOTATE: Final = b"""
update chat_messages_v2 set metadata = metadata || %s::jsonb where id = %s"""
_UPSERT_AGENT: Final = b"""
insert into agents (id, instructions, voice, voices, model, transcription, turn_detection,
                    tools, device_may_set, updated_at)
values (%s, %s, %s, %s::jsonb, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, now())
on conflict (id) do update set instructions = excluded.instructions,
    voice = excluded.voice, voices = excluded.voices, model = excluded.model,
    transcription = excluded.transcription, turn_detection = excluded.turn_detection,
    tools = excluded.tools, device_may_set = excluded.device_may_set, updated_at = now()"""
_AGENT_COLUMNS: Final = ("id", "instructions", "voice", "voices", "model", "transcription",
                         "turn_detection", "tools", "device_may_set")


class StoreUnavailable(BackendError):
    """The database could not be reached or did not answer in time."""


class StoreRefused(StoreUnavailable):
    """The database answered with an error retrying cannot fix (bad data, schema)."""


class DeviceExists(BackendError):
    """``add-device`` for a name that already has a live token."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """One conversation as the browser client's transcript view reads it."""

    conversation_id: str
    agent_id: str | None
    created_at: str
    messages: list[dict[str, Any]]
    """``{id, role, content, created_at, interrupted[, heard_ms]}``, oldest first."""
    more: bool
    """Older rows exist beyond the limit."""


def _iso(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


@dataclass(frozen=True, slots=True)
class Device:
    """A device the relay knows by its token."""

    name: str
    revoked: bool


def spool_record(write: Write) -> dict[str, Any]:
    """A write as the spool keeps it (an ``id`` key, as the outbox requires)."""
    if isinstance(write, Insert):
        return write.record
    return {"id": write.record_id, "annotate": write.metadata}


def _describe(e: BaseException) -> str:
    # NOTE: never the DSN: it carries the password (guard redacts it anyway)
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class Store:
    """PostgreSQL behind a small pool; safe to share between connections."""

    name = "postgres"

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self._pool: Any = None

    async def open(self) -> None:
        """Create the pool (connections are made in the background, as needed)."""
        from psycopg_pool import AsyncConnectionPool

        assert self.settings.dsn is not None  # validated
        timeout = self.settings.timeout_s
        self._pool = AsyncConnectionPool(
            self.settings.dsn.reveal(), min_size=1, max_size=self.settings.pool_size,
            open=False, timeout=timeout, reconnect_timeout=max(60.0, timeout * 4),
            check=AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout)),
                    "options": f"-c statement_timeout={round(timeout * 1000)}"})
        await self._pool.open(wait=False)

    async def aclose(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close(timeout=self.settings.timeout_s)
            self._pool = None

    async def _run(self, what: str, fn: Any) -> Any:
        """Run ``fn(conn)`` on a pooled connection, bounded, errors as StoreUnavailable."""
        import psycopg
        from psycopg_pool import PoolTimeout

        async def go() -> Any:
            async with self._pool.connection() as conn:
                return await fn(conn)

        try:
            return await asyncio.wait_for(go(), self.settings.timeout_s * 2)
        except (psycopg.OperationalError, psycopg.errors.QueryCanceled, PoolTimeout,
                OSError, TimeoutError) as e:
            raise StoreUnavailable(f"database unavailable ({what}): {_describe(e)}") from None
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as e:
            raise StoreRefused(f"database refused {what}: {_describe(e)}") from None
        except psycopg.Error as e:
            # e.g. a missing table or privilege: fixable by a person, so worth retrying
            raise StoreUnavailable(f"database failed {what}: {_describe(e)}") from None

    # ---------------------------------------------------------------- set-up

    async def prepare(self, agents: tuple[Agent, ...]) -> None:
        """Apply both schemas (idempotent, one relay at a time) and upsert the agents."""
        seed, own = SEED_SCHEMA.read_bytes(), RELAY_SCHEMA.read_bytes()

        async def go(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(b"select pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await conn.execute(seed)
                await conn.execute(own)
                for a in agents:
                    await conn.execute(_UPSERT_AGENT, _agent_params(a))

        await self._run("schema", go)

    # ---------------------------------------------------------------- devices

    async def device_for_token(self, token: str) -> Device | None:
        """The device whose token this is, or None."""
        digest = auth.hash_token(token)

        async def go(conn: Any) -> Any:
            cur = await conn.execute(b"select name, token_hash, revoked_at from relay_devices "
                                     b"where token_hash = %s", (digest,))
            return await cur.fetchone()

        row = await self._run("token lookup", go)
        if row is None or not auth.same_hash(bytes(row[1]), digest):
            return None
        return Device(name=row[0], revoked=row[2] is not None)

    async def add_device(self, name: str) -> str:
        """A new token for ``name`` (a revoked device gets a fresh one).

        Raises:
            DeviceExists: the device has a live token.
        """
        token = auth.new_token()

        async def go(conn: Any) -> Any:
            cur = await conn.execute(
                b"insert into relay_devices (name, token_hash) values (%s, %s) "
                b"on conflict (name) do update set token_hash = excluded.token_hash, "
                b"created_at = now(), revoked_at = null "
                b"where relay_devices.revoked_at is not null returning name",
                (name, auth.hash_token(token)))
            return await cur.fetchone()

        if await self._run("add-device", go) is None:
            raise DeviceExists(f"device {name!r} already has a token; revoke-device it "
                               "first to give it a new one")
        return token

    async def revoke_device(self, name: str) -> bool:
        """Revoke ``name``'s token; False when there is no such live device."""

        async def go(conn: Any) -> Any:
            cur = await conn.execute(b"update relay_devices set revoked_at = now() "
                                     b"where name = %s and revoked_at is null returning name",
                                     (name,))
            return await cur.fetchone()

        return await self._run("revoke-device", go) is not None

    async def revoked(self, names: list[str]) -> set[str]:
        """Which of ``names`` no longer have a live token."""

        async def go(conn: Any) -> Any:
            cur = await conn.execute(b"select name from relay_devices where name = any(%s) "
                                     b"and revoked_at is null", (names,))
            return await cur.fetchall()

        live = {str(r[0]) for r in await self._run("revocation check", go)}
        return set(names) - live

    async def devices(self) -> list[tuple[str, str, str | None]]:
        """(name, created, revoked) of every device."""

        async def go(conn: Any) -> Any:
            cur = await conn.execute(b"select name, created_at::text, revoked_at::text "
                                     b"from relay_devices order by name")
            return await cur.fetchall()

        return list(await self._run("list-devices", go))

    # ---------------------------------------------------------------- agents

    async def agent(self, agent_id: str) -> Agent | None:
        """The agent ``agent_id`` selects, validated, or None.

        Raises:
            ConfigError: the row is not a valid agent.
        """

        async def go(conn: Any) -> Any:
            cur = await conn.execute(
                ("select " + ", ".join(_AGENT_COLUMNS) + " from agents where id = %s").encode(),
                (agent_id,))
            return await cur.fetchone()

        row = await self._run("agent lookup", go)
        if row is None:
            return None
        return agent_from_row(dict(zip(_AGENT_COLUMNS, row, strict=True)))

    # ---------------------------------------------------------------- conversations

    async def conversation_device(self, conversation_id: str) -> str | None:
        """The device a conversation belongs to, or None when there is no such one."""

        async def go(conn: Any) -> Any:
            cur = await conn.execute(b"select device_id from conversations where id = %s",
                                     (conversation_id,))
            return await cur.fetchone()

        row = await self._run("conversation lookup", go)
        return None if row is None else str(row[0])

    async def create_conversation(self, conversation_id: str, agent_id: str,
                                  device: str) -> None:
        """Insert a new conversation of ``device`` with ``agent_id``."""

        async def go(conn: Any) -> None:
            await conn.execute(b"insert into conversations (id, agent_id, device_id) "
                               b"values (%s, %s, %s) on conflict (id) do nothing",
                               (conversation_id, agent_id, device))

        await self._run("new conversation", go)

    async def transcript(self, conversation_id: str, device: str, *, limit: int,
                         max_chars: int) -> Transcript | None:
        """The newest ``limit`` rows of ``device``'s conversation, oldest first.

        None when there is no such conversation *of this device* (one answer for unknown
        and someone else's). Each content is cut to ``max_chars`` characters.
        """

        async def go(conn: Any) -> Any:
            cur = await conn.execute(
                b"select agent_id, created_at from conversations "
                b"where id = %s and device_id = %s", (conversation_id, device))
            head = await cur.fetchone()
            if head is None:
                return None
            cur = await conn.execute(
                b"select id::text, role, left(content, %s::int), created_at, "
                b"coalesce(metadata->>'interrupted', 'false') = 'true', "
                b"metadata->'heard_ms' from chat_messages_v2 where conversation_id = %s "
                b"order by created_at desc, id desc limit %s",
                (max_chars, conversation_id, limit + 1))
            return head, await cur.fetchall()

        found = await self._run("transcript read", go)
        if found is None:
            return None
        (agent_id, created_at), rows = found
        more = len(rows) > limit
        messages = [
            {"id": r[0], "role": r[1], "content": r[2], "created_at": _iso(r[3]),
             "interrupted": bool(r[4]),
             **({"heard_ms": r[5]} if isinstance(r[5], int) and not isinstance(r[5], bool)
                else {})}
            for r in reversed(rows[:limit])]
        return Transcript(conversation_id=conversation_id, agent_id=agent_id,
                          created_at=_iso(created_at), messages=messages, more=more)

    # ---------------------------------------------------------------- messages

    async def write(self, writes: tuple[Write, ...]) -> None:
        """Make ``writes`` durable in one transaction (idempotent: ids are deterministic)."""

        async def go(conn: Any) -> None:
            async with conn.transaction():
                for w in writes:
                    await _apply(conn, w)

        await self._run("transcript write", go)

    async def deliver(self, record: dict[str, Any]) -> Result:
        """The spool's sink: write one spooled record (see :func:`spool_record`)."""
        write: Write
        try:
            if isinstance(record.get("annotate"), dict):
                write = Annotate(str(record["id"]), record["annotate"])
            else:
                message_row(record)  # a record with fields missing is refused here
                write = Insert(record)
            await self.write((write,))
        except StoreRefused as e:
            return Result(Outcome.REJECTED, str(e))
        except StoreUnavailable as e:
            return Result(Outcome.RETRY, str(e))
        except (KeyError, TypeError, ValueError) as e:
            return Result(Outcome.REJECTED, f"not a transcript record: {e!r}")
        logger.debug("delivered from the spool: %s", record.get("id"))
        return Result(Outcome.DELIVERED)


def _no_nul(value: Any) -> Any:
    """``value`` without NUL characters (PostgreSQL text and jsonb cannot hold one)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def _jsonb(value: object) -> str:
    return json.dumps(_no_nul(value), ensure_ascii=False)


async def _apply(conn: Any, write: Write) -> None:
    if isinstance(write, Insert):
        row = message_row(write.record)
        await conn.execute(_INSERT_MESSAGE, (
            row["id"], row["conversation_id"], row["role"],
            _no_nul(str(row["content"])), _jsonb(row["metadata"]),
            row["created_at"]))
    else:
        await conn.execute(_ANNOTATE, (_jsonb(write.metadata), write.record_id))


def _agent_params(a: Agent) -> tuple[Any, ...]:
    r = a.row()
    return (r["id"], r["instructions"], r["voice"], json.dumps(r["voices"]), r["model"],
            json.dumps(r["transcription"]), json.dumps(r["turn_detection"])
            if r["turn_detection"] is not None else None, json.dumps(r["tools"]),
            json.dumps(r["device_may_set"]))


__all__ = ["ConfigError", "Device", "DeviceExists", "Store", "StoreRefused",
           "StoreUnavailable", "Transcript", "spool_record"]
