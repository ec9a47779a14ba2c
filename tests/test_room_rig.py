"""The rig of tests/test_aec_run.py keeps time: the room (tests/room_process.py) between
the null sinks ``spk`` and ``mic`` moves every click by one constant, and says so when
the mic's line moves (a run-dry in the server shows in no stream flag)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.room_probe import PERIOD, probe
from tests.room_process import BLOCK, LineCheck, Room


def _checked(played: list[np.ndarray], rec: np.ndarray) -> tuple[LineCheck, list[str]]:
    room = Room(delay=0, gain=1.0)
    room.played = played
    check = LineCheck(room)
    check.rec = rec
    check.check()
    return check, room.events


def _noise(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-8000, 8000, BLOCK).astype(np.int16) for _ in range(n)]


def test_line_check_finds_the_room_in_its_recording_and_reports_a_gap() -> None:
    played = _noise(1, 20)
    played[3] = np.zeros(BLOCK, np.int16)  # silence says nothing
    lead = np.zeros(1234, np.int16)  # the recording began before the room played
    steady, events = _checked(played, np.concatenate([lead, *played]))
    assert (steady.offset, steady.moved, events) == (1234, 0, [])

    gap = np.zeros(37, np.int16)  # the sink ran dry for 37 samples before block 12
    moved, events = _checked(played, np.concatenate([lead, *played[:12], gap,
                                                     *played[12:]]))
    assert moved.offset == 1234 + 37 and moved.moved == 37
    assert events == [f"moved 37 {12 * BLOCK}", f"flags {LineCheck.MOVED} {12 * BLOCK}"]


def test_line_check_takes_the_nearest_match_of_a_repeating_sound() -> None:
    # the probe's clicks: every click's block is the same block, PERIOD apart
    click = np.zeros(BLOCK, np.int16)
    click[100:124] = 10000
    silence = [np.zeros(BLOCK, np.int16)] * (PERIOD // BLOCK - 1)
    played = [b for _ in range(6) for b in (click, *silence)]
    rec = np.concatenate([*played[:2 * PERIOD // BLOCK], np.zeros(100, np.int16),
                          *played[2 * PERIOD // BLOCK:]])
    check, events = _checked(played, rec)
    assert check.moved == 100, events  # not a whole period either way


@pytest.mark.timeout(180)
def test_the_room_moves_every_click_by_one_constant(tmp_path: Path) -> None:
    """10 s of clicks every 500 ms through the room, as the AEC test runs it: the
    intervals in the mic are exact, the delay constant, and the room saw no fault."""
    if shutil.which("pulseaudio") is None or shutil.which("parec") is None:
        pytest.skip("pulseaudio is not installed (scripts/setup.sh test installs it)")
    result = probe(tmp_path, 10.0, busy=0)
    print(result.summary())
    assert result.clicks >= 18
    assert result.room_flags == [] and result.room_moved == [], result.summary()
    assert set(result.mic_intervals) == {PERIOD}
    assert set(result.delay_drift) == {0}
