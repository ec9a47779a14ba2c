"""On-device turn detection: the real WebRTC VAD, the daemon and the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TIMEOUT
from tests.speech import question_24k, speech_with_pauses
from tests.test_supervisor import roles, running
from voiced.audio.vad import SpeechDetector
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer
from voiced.wire import SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms


def test_the_detector_hears_the_question_and_not_the_room() -> None:
    det = SpeechDetector(2)
    rng = np.random.default_rng(1)
    room = rng.integers(-20, 21, SAMPLE_RATE).astype("<i2").tobytes()
    verdicts = [det.is_speech(room[i:i + FRAME * 2]) for i in range(0, len(room), FRAME * 2)]
    assert not any(verdicts)
    q = question_24k().astype("<i2").tobytes()
    heard = [det.is_speech(q[i:i + FRAME * 2]) for i in range(0, len(q) - FRAME * 2, FRAME * 2)]
    assert sum(heard) > len(heard) // 2  # most of the spoken part


async def test_only_speech_is_sent_and_each_utterance_committed_once(tmp_path: Path) -> None:
    wav = tmp_path / "two-questions.wav"
    spans = speech_with_pauses(wav, [1.5, 4.0, 3.0])
    total_s = 1.5 + 4.0 + 3.0 + sum(e - s for s, e in spans)
    async with SimServer(SimOptions(pace=4, reply=lambda heard: "OK.")) as sim:
        # full duplex: the mic is never muted, so the second question is heard whole
        # however late the first reply comes (half duplex drops what the user says while
        # a reply plays: on a busy machine the reply came late and ate the question)
        async with running(tmp_path, sim, speed=2, mic_wav=wav, audio={
                "input_file_starts": "on_mic", "echo": "full_duplex"},
                realtime={"turn_detection": {
                    "type": "client_vad", "prefix_padding_ms": 200, "tail_ms": 200,
                    "silence_duration_ms": 600}}) as h:
            await h.wait(lambda: h.state == State.READY)
            s = sim.sessions[0]
            assert s.session["audio"]["input"]["turn_detection"] is None  # no server VAD
            h.sup._on_control("press")
            # 13 s of input at twice real time, two recognitions: a long wait on a busy
            # machine, so twice the usual bound. Two of each, in any order: a slow
            # recognition delivers the user's words after the short reply to them
            await h.wait(lambda: sorted(roles(h)) == ["assistant"] * 2 + ["user"] * 2,
                         within_s=2 * TIMEOUT)
            commits = [e for e in s.received if e["type"] == "input_audio_buffer.commit"]
            creates = [e for e in s.received if e["type"] == "response.create"]
            assert len(commits) == 2 and len(creates) == 2  # once per utterance
            sent_s = len(s.appended) / 2 / SAMPLE_RATE
            speech_s = sum(e - s_ for s_, e in spans)
            # the speech, plus at most pre-roll + start + tail per utterance (and the
            # question's own short pauses), and never the long silences
            assert speech_s * 0.7 < sent_s < speech_s + 2 * (0.2 + 0.06 + 0.2 + 0.1)
            assert sent_s < total_s / 2
            assert h.sup.session.counters.vad_turns == 2


def test_client_vad_config_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    from voiced import config
    from voiced.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # a board where the wheel is missing
                        lambda name, *a: None if name == "webrtcvad" else real(name, *a))
    raw = {"realtime": {"url": "ws://127.0.0.1:1/v1/realtime", "turn_detection": {
        "type": "client_vad", "tail_ms": 900, "silence_duration_ms": 500,
        "vad_aggressiveness": 4}}}
    with pytest.raises(ConfigError) as e:
        config.parse(raw, environ={})
    text = "\n".join(e.value.lines())
    assert "realtime.turn_detection.tail_ms: 900 is longer than silence_duration_ms" in text
    assert "realtime.turn_detection.vad_aggressiveness: 4 is out of range" in text
    assert ("realtime.turn_detection.type: client_vad needs the webrtcvad module: "
            "pip install 'voiced[vad]'") in text
