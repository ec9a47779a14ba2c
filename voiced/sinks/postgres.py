"""The ``postgres`` sink: direct inserts for self-hosted backends (psycopg 3).

psycopg 3 is the maintained PostgreSQL driver with native asyncio. ``voiced[postgres]``
installs plain psycopg, which loads the system libpq (``apt install libpq5``): the
binary wheels that bundle one do not cover armv7l.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from voiced import guard
from voiced.config import Secret, dsn_problem
from voiced.outbox import Outcome, Result

logger = logging.getLogger(__name__)

# SET takes no parameters; the value is an int we format ourselves
_STATEMENT_TIMEOUT = "set local statement_timeout = {ms}"
_INSERT_CONVERSATION = """
insert into conversations (id, agent_id, device_id, created_at)
values (%s, %s, %s, %s) on conflict do nothing"""
_INSERT_MESSAGE = """
insert into chat_messages_v2 (id, conversation_id, role, content, metadata, created_at)
values (%s, %s, %s, %s, %s::jsonb, %s) on conflict do nothing"""


class PostgresSink:
    """Inserts the conversation (once) and the message in one transaction."""

    name = "postgres"

    def __init__(self, dsn: Secret, *, timeout_s: float, device_id: str,
                 agent_id: str | None) -> None:
        self.dsn = dsn
        self.timeout_s = timeout_s
        self.device_id = device_id
        self.agent_id = agent_id
        self._conn: Any = None

    async def _connect(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn.reveal(), connect_timeout=max(1, int(self.timeout_s)),
                autocommit=False)
        return self._conn

    async def deliver(self, record: dict[str, Any]) -> Result:
        """Insert; unique conflicts count as delivered.

        Only what is wrong with the record itself (its data) rejects it; a connection
        string, a server, a schema or a role that is wrong is the configuration's fault
        and is retried, so no record is parked in rejected/ for it. The whole attempt
        ends after ``timeout_s``: a locked table or a server that stopped answering must
        not hold the outbox (and every later record) forever. The server gets the same
        limit as its statement_timeout, so it gives up too.
        """
        import psycopg

        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    conn = await self._connect()
                except Exception as e:  # noqa: BLE001 - every connect failure is the config's
                    await self._drop()
                    why = dsn_problem(self.dsn.reveal())
                    if why is not None:  # libpq's text would quote the DSN: never used
                        return Result(Outcome.RETRY, f"credential postgres_dsn {why}")
                    return Result(Outcome.RETRY, f"cannot connect: {type(e).__name__}: "
                                                 f"{guard.printable(str(e).strip(), 200)}")
                async with conn.transaction():
                    await conn.execute(_STATEMENT_TIMEOUT.format(
                        ms=max(1, int(self.timeout_s * 1000))))
                    await conn.execute(_INSERT_CONVERSATION, (
                        record["conversation_id"], self.agent_id, self.device_id,
                        record["created_at"]))
                    await conn.execute(_INSERT_MESSAGE, (
                        record["id"], record["conversation_id"], record["role"],
                        record["text"], json.dumps(record["metadata"], ensure_ascii=False),
                        record["created_at"]))
            return Result(Outcome.DELIVERED)
        except TimeoutError:
            await self._drop()  # cut off mid-query: the connection's state is unknown
            return Result(Outcome.RETRY, f"no answer within {self.timeout_s:g} s")
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
            # the record's data is wrong (not a UUID, a constraint): retrying cannot help
            return Result(Outcome.REJECTED, f"{type(e).__name__}: "
                                            f"{guard.printable(str(e).strip(), 200)}")
        except (psycopg.errors.ProgrammingError, psycopg.errors.InsufficientPrivilege) as e:
            # the schema is not applied, a column is missing, the role may not insert:
            # fixable, and not the record's fault, so keep trying
            await self._drop()
            return Result(Outcome.RETRY, f"{type(e).__name__}: "
                                         f"{guard.printable(str(e).strip(), 200)} "
                                         "(apply voiced/sinks/schema.sql?)")
        except (psycopg.Error, OSError) as e:
            await self._drop()
            # NOTE: never log the DSN: it carries the password (registered as a secret)
            return Result(Outcome.RETRY, f"{type(e).__name__}: "
                                         f"{guard.printable(str(e).strip(), 200)}")

    async def _drop(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception as e:  # noqa: BLE001 - already broken
                logger.debug("closing a broken connection: %s", e)
            self._conn = None

    async def aclose(self) -> None:
        """Close the connection."""
        await self._drop()
