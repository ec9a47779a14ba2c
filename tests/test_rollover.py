"""Sessions end after 60 minutes: the daemon moves to a new one without losing anything.

Time is the test's: the simulator and the daemon share one :class:`ManualClock`, and the
test moves it to just inside the rollover margin, so an hour-long session nears its end
at the moment the test chooses, however slow the machine is. Expiries that cut the user
off mid-sentence are tied to the audio the simulator has received, not to a timer. The
assertions are about the order of events, never about how long anything took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TIMEOUT
from tests.test_supervisor import roles, running
from voiced.core.effects import State
from voiced.sim.server import ManualClock, SimOptions, SimServer, SimSession


def reseeded(session: Any) -> list[tuple[str, str]]:
    return [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in session.received
            if e["type"] == "conversation.item.create"]


def kinds(session: SimSession) -> list[str]:
    return [e["type"] for e in session.sent]


async def test_a_conversation_lives_across_three_session_expiries(
        tmp_path: Path, user_transcript: str) -> None:
    clock = ManualClock()
    margin = 300
    async with SimServer(SimOptions(pace=4, user_transcript=user_transcript),
                         clock=clock) as sim:
        async with running(tmp_path, sim, wall_clock=clock.time,
                           realtime={"rollover_margin_s": margin}) as h:
            await h.wait(lambda: h.state == State.READY)
            conversation = h.sup.status()["conversation_id"]
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            for n in range(1, 4):
                live = sim.sessions[-1]
                # inside the margin, not yet in its last fifth: the switch waits for a
                # quiet moment, and the mic hears only silence now
                clock.advance_to(live.expires_at - margin * 0.8)
                await h.wait(lambda n=n: len(sim.sessions) == n + 1
                             and sim.sessions[n - 1].ended_at is not None
                             and h.sup.session.connected and h.sup.session.standby is None)
            assert len(sim.sessions) == 4
            assert h.sup.status()["conversation_id"] == conversation
            # make before break: each next session was configured before the old closed,
            # and the device never showed "connecting" again
            for old, new in zip(sim.sessions[:3], sim.sessions[1:4], strict=True):
                assert old.ended_at is not None and new.sent_at[0] < old.ended_at
                assert any(e["type"] == "session.update" for e in new.received)
                assert not old.expired  # none of them reached its end
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
            # each rollover waited for quiet: when an old session closed, no reply was
            # being generated in it and nobody was speaking into it
            assert not any(s.ended_busy for s in sim.sessions[:3])
            assert all(r["metadata"].get("interrupted") in (None, False) for r in h.records)
            assert {r["conversation_id"] for r in h.records} == {conversation}


async def test_expiry_mid_sentence_replays_the_users_words(tmp_path: Path,
                                                           user_transcript: str) -> None:
    # the first session ends (session_expired, close 1001) once it has heard 0.8 s of
    # the question, the second at 1.4 s: mid-sentence both times (the speech runs from
    # about 0.1 to 1.9 s), whatever the machine's speed
    clock = ManualClock()
    opts = SimOptions(pace=4, user_transcript=user_transcript, expire_at_input_ms=(800, 1400))
    async with SimServer(opts, clock=clock) as sim:
        async with running(tmp_path, sim, wall_clock=clock.time) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h)[:1] == ["user"], within_s=2 * TIMEOUT)
            assert len(sim.sessions) == 3
            first, second, third = sim.sessions
            for cut in (first, second):
                # it ended mid-sentence: the speech had started, nothing was committed
                assert cut.expired and "input_audio_buffer.speech_started" in kinds(cut)
                assert "input_audio_buffer.committed" not in kinds(cut)
                assert kinds(cut)[-1] == "error" and cut.sent[-1]["error"]["code"] == \
                    "session_expired"
            # each new session first gets everything the old one heard and never
            # committed, in order, then the words that follow
            for old, new in ((first, second), (second, third)):
                assert bytes(new.appended).startswith(bytes(old.appended))
                assert len(new.appended) > len(old.appended)
            # the third heard the whole question: its words are the user's record
            heard = next(e["transcript"] for e in third.sent if e["type"] ==
                         "conversation.item.input_audio_transcription.completed")
            user = next(r for r in h.records if r["role"] == "user")
            assert user["text"] == heard and heard
            assert h.sup.status()["conversation_id"] == user["conversation_id"]


async def test_a_refused_next_session_leaves_the_live_one_alone(
        tmp_path: Path, user_transcript: str) -> None:
    # the server refuses the standby connection: the live session goes on untouched,
    # the standby is tried again, and the switch happens once the server accepts
    clock = ManualClock()
    async with SimServer(SimOptions(pace=4, user_transcript=user_transcript),
                         clock=clock) as sim:
        async with running(tmp_path, sim, wall_clock=clock.time,
                           realtime={"rollover_margin_s": 300}) as h:
            await h.wait(lambda: h.state == State.READY)
            sim.refuse_connections = True
            attempts = len(sim.attempts)
            clock.advance_to(sim.sessions[0].expires_at - 200)
            await h.wait(lambda: len(sim.attempts) > attempts)
            await h.wait(lambda: h.sup.session.standby is None)
            assert h.sup.session.connected and len(sim.sessions) == 1
            assert sim.sessions[0].ended_at is None
            sim.refuse_connections = False
            h.sup.session.rollover.retry_at = 0.0  # skip the 10 s retry pause
            await h.wait(lambda: len(sim.sessions) == 2
                         and sim.sessions[0].ended_at is not None)
            assert State.CONNECTING not in h.states[h.states.index(State.READY):]
