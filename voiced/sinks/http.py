"""HTTP sinks: ``webhook`` (one POST per record) and ``supabase`` (PostgREST inserts).

aiohttp is the client: asyncio-native, well kept, one session with a connection pool,
per-request timeouts, and its server half serves the tests' fake backends. Redirects are
never followed (the requests carry a credential) and are not delivery; an error reply is
read only up to :data:`voiced.http_peer.ERROR_BODY_LIMIT` (voiced/http_peer.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from voiced import guard
from voiced.config import Secret
from voiced.http_peer import ERROR_BODY_LIMIT, is_redirect, read_text, redirect_reason
from voiced.outbox import Outcome, Result
from voiced.sinks import message_row

# NOTE: these 4xx say nothing about the record: the device's credentials, the URL, or
# the backend's load are wrong for now. Retrying keeps the records instead of parking
# every one of them in rejected/ until someone fixes a key.
_RETRY_4XX = frozenset({401, 403, 404, 408, 429})


def classify_status(status: int, body: str) -> Result:
    """2xx and 409 delivered; other 4xx rejected (but see _RETRY_4XX); the rest retried."""
    if 200 <= status < 300 or status == 409:
        return Result(Outcome.DELIVERED)
    reason = f"HTTP {status}" + (f": {guard.printable(body, 200)}" if body else "")
    if 400 <= status < 500 and status not in _RETRY_4XX:
        return Result(Outcome.REJECTED, reason)
    return Result(Outcome.RETRY, reason)


class _HttpSink:
    name = "http"

    def __init__(self, timeout_s: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> Result:
        try:
            async with self.session().post(
                    url, data=json.dumps(body, ensure_ascii=False).encode(),
                    headers={"Content-Type": "application/json", **headers},
                    allow_redirects=False) as resp:
                if is_redirect(resp.status):  # not delivered, and not followed
                    return Result(Outcome.RETRY, redirect_reason(resp))
                if 200 <= resp.status < 300:
                    return Result(Outcome.DELIVERED)  # the body says nothing we need
                text = await read_text(resp, ERROR_BODY_LIMIT)
                return classify_status(resp.status, text)
        except TimeoutError:
            return Result(Outcome.RETRY, f"no answer within {self.timeout.total:g} s")
        except (aiohttp.ClientError, OSError) as e:
            return Result(Outcome.RETRY, f"{type(e).__name__}: {guard.printable(e, 200)}")
        except ValueError as e:
            # aiohttp refuses a header it cannot send (a credential with a newline, which
            # config refuses too); its message may quote the header: never shown
            return Result(Outcome.RETRY, f"the request could not be made "
                                         f"({type(e).__name__}); check the credential")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)


class WebhookSink(_HttpSink):
    """POSTs the contract's JSON, one record per request, with ``Idempotency-Key``."""

    name = "webhook"

    def __init__(self, url: str, *, token: Secret | None, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.url = url
        self.token = token

    async def deliver(self, record: dict[str, Any]) -> Result:
        """POST the record."""
        headers = {"Idempotency-Key": record["id"]}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token.reveal()}"
        return await self.post(self.url, record, headers)


class SupabaseSink(_HttpSink):
    """Inserts into ``conversations`` then ``chat_messages_v2`` through PostgREST."""

    name = "supabase"

    def __init__(self, url: str, *, key: Secret, timeout_s: float, device_id: str,
                 agent_id: str | None) -> None:
        super().__init__(timeout_s)
        self.base = url.rstrip("/") + "/rest/v1"
        self.key = key
        self.device_id = device_id
        self.agent_id = agent_id
        self._known: set[str] = set()  # conversations created in this process

    async def deliver(self, record: dict[str, Any]) -> Result:
        """Create the conversation once, then insert the message; both idempotent."""
        headers = {"apikey": self.key.reveal(), "Authorization": f"Bearer {self.key.reveal()}",
                   "Prefer": "resolution=ignore-duplicates,return=minimal"}
        cid = record["conversation_id"]
        if cid not in self._known:
            res = await self.post(f"{self.base}/conversations", {
                "id": cid, "agent_id": self.agent_id, "device_id": self.device_id,
                "created_at": record["created_at"]}, headers)
            if res.outcome is not Outcome.DELIVERED:
                return res
            self._known.add(cid)
        return await self.post(f"{self.base}/chat_messages_v2", message_row(record), headers)
