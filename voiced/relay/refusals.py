"""Refusals at the relay's HTTP boundary, and the checks the handshake and the page share.

A device's handshake and the browser client's endpoints give the same answers.
"""

from __future__ import annotations

from http import HTTPStatus

from voiced.errors import ConfigError
from voiced.relay.config import AGENT_ID_RE, Agent
from voiced.relay.store import Store


class Refused(Exception):
    """A refusal: an HTTP status, a body, and maybe a Retry-After."""

    def __init__(self, status: HTTPStatus, text: str, *, retry_after: float | None = None,
                 log: str | None = None) -> None:
        super().__init__(text)
        self.status, self.text, self.retry_after = status, text, retry_after
        self.log = log


async def agent_for(store: Store, query: dict[str, list[str]]) -> Agent:
    """The agent ``?agent_id=`` names: 400 malformed, 404 unknown, 503 misconfigured.

    Raises:
        Refused: as above.
        StoreUnavailable: the database did not answer.
    """
    agent_id = (query.get("agent_id") or [""])[0]
    if not AGENT_ID_RE.match(agent_id):
        raise Refused(HTTPStatus.BAD_REQUEST, "agent_id is missing or malformed")
    try:
        agent = await store.agent(agent_id)
    except ConfigError as e:
        raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "this agent is misconfigured",
                      log=f"agent {agent_id} in the database: {e}") from None
    if agent is None:
        raise Refused(HTTPStatus.NOT_FOUND, f"unknown agent {agent_id}")
    return agent


__all__ = ["Refused", "agent_for"]
