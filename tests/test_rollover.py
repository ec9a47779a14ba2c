"""Sessions end after 60 minutes: the daemon moves to a new one without losing anything.

The daemon's wall clock is injected and runs 600 times faster than real time, so an
hour-long session "expires" every six seconds while the simulator keeps real time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import TIMEOUT
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
            # three expiries take about 17 s of real time: more than the usual bound
            await h.wait(lambda: len(sim.sessions) >= 4 and h.sup.session.connected
                         and sim.sessions[2].ended_at is not None, within_s=3 * TIMEOUT)
            assert h.sup.status()["conversation_id"] == conversation
            # make before break: each next session was configured before the old closed,
            # and the device never showed "connecting" again
            for old, new in zip(sim.sessions[:3], sim.sessions[1:4], strict=True):
                assert old.ended_at is not None and new.sent_at[0] < old.ended_at
                assert any(e["type"] == "session.update" for e in new.received)
            ready = h.states.index(State.READY)
            assert State.CONNECTING not in h.states[ready:]
            # every mic byte the daemon sent reached a session: none went to a closing one
            # (waited for: the newest frames may still be in flight)
            assert h.sup.session.counters.appended_samples > 0
            await h.wait(lambda: h.sup.session.counters.appended_samples * 2
                         == sum(len(s.appended) for s in sim.sessions))
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


async def test_a_refused_next_session_leaves_the_live_one_alone(tmp_path: Path) -> None:
    # the server refuses the standby connection: the live session goes on untouched,
    # the standby is tried again, and the switch happens once the server accepts
    clock = {"offset": 0.0}
    t0 = time.time()
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, wall_clock=lambda: time.time() + clock["offset"],
                           realtime={"rollover_margin_s": 300}) as h:
            await h.wait(lambda: h.state == State.READY)
            sim.refuse_connections = True
            attempts = len(sim.attempts)
            clock["offset"] = (sim.sessions[0].created_at + 3600 - 200) - t0
            await h.wait(lambda: len(sim.attempts) > attempts)
            await h.wait(lambda: h.sup.session.standby is None)
            assert h.sup.session.connected and len(sim.sessions) == 1
            assert sim.sessions[0].ended_at is None
            sim.refuse_connections = False
            h.sup.session._standby_retry_at = 0.0  # skip the 10 s retry pause
            await h.wait(lambda: len(sim.sessions) == 2
                         and sim.sessions[0].ended_at is not None)
            assert State.CONNECTING not in h.states[h.states.index(State.READY):]
