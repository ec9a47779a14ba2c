"""Sessions end after 60 minutes: the daemon moves to a new one without losing anything.

The daemon's wall clock is injected and runs 600 times faster than real time, so an
hour-long session "expires" every six seconds while the simulator keeps real time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.test_supervisor import roles, running
from voiced.session import State
from voiced.sim.server import SimOptions, SimServer


def fast_clock(factor: float) -> Any:
    t0 = time.time()
    return lambda: t0 + (time.time() - t0) * factor


def reseeded(session: Any) -> list[tuple[str, str]]:
    return [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in session.received
            if e["type"] == "conversation.item.create"]


async def test_a_conversation_lives_across_three_session_expiries(tmp_path: Path) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, wall_clock=fast_clock(600),
                           realtime={"rollover_margin_s": 300}) as h:
            await h.wait(lambda: h.state == State.READY)
            conversation = h.sup.status()["conversation_id"]
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            await h.wait(lambda: len(sim.sessions) >= 4 and h.sup.session.connected)
            assert h.sup.status()["conversation_id"] == conversation
            said = [(r["role"], r["text"]) for r in h.records]
            for session in sim.sessions[1:4]:
                assert reseeded(session) == said  # every new session knows the exchange
            # each rollover waited for quiet: none cut a reply or a user turn short
            assert all(r["metadata"].get("interrupted") in (None, False) for r in h.records)
            assert {r["conversation_id"] for r in h.records} == {conversation}


async def test_expiry_mid_sentence_replays_the_users_words(tmp_path: Path) -> None:
    # every session ends (session_expired, close 1001) 1.2 s in: mid-question, twice
    async with SimServer(SimOptions(pace=4, max_session_s=1.2)) as sim:
        async with running(tmp_path, sim, realtime={"rollover_margin_s": 5}) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h)[:1] == ["user"])
            heard = [bytes(s.appended) for s in sim.sessions]
            # each new session first gets everything the old one heard and never
            # committed, in order, then the words that follow
            assert len(heard) >= 3
            for old, new in zip(heard[:2], heard[1:3], strict=True):
                assert new.startswith(old) and len(new) > len(old)
            user = next(r for r in h.records if r["role"] == "user")
            assert user["text"]
            assert h.sup.status()["conversation_id"] == user["conversation_id"]
