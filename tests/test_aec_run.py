"""The echo canceller through `voiced run` (issue 22): the daemon on the real PortAudio
stack (PulseAudio null sinks), against `voiced sim`, with a room between its speaker and
its mic.

The rig: the daemon plays into the sink ``spk`` and records ``mic.monitor``. The test's
room (tests/room_process.py, a process of its own at real-time priority, started by
``room_command``) reads ``spk.monitor`` and writes into the sink ``mic`` what a mic in a
room would hear: the speaker's sound after ``ROOM_DELAY_MS`` at ``ROOM_GAIN`` (-6 dB),
plus the user's voice from chosen moments on. It is two streams of libpulse's simple API
in one real-time thread: each 20 ms block it reads of the monitor becomes the block it
writes (behind a fixed cushion), so the room's delay is a fixed offset in its own line,
and everything it wrote is on one timeline (the "room's"): the echo that reached the
mic is known exactly. That the line stayed whole is checked, not assumed: the room finds
each block it played in ``mic.monitor`` and reports any move as a fault (``flags``),
which this test prints. (The room as a thread in pytest, parec -> pacat, was starved on
the busy machine: pacat's pipe grew to 400 ms, then 1.2 s, within a run; a full-duplex
PortAudio stream spun in its poll loop; PulseAudio's module-loopback glitches too much:
tests/test_aec_pulse.py.)

Positions, not clocks: the simulator's VAD events and the truncate carry audio
positions; the room's timeline is mapped onto the audio the simulator received by
finding the user's question in it (no speaker sound then, so the canceller passes it),
and checked again with the barge-in voice. What the sink played is read in the
recorded ``spk.monitor``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TIMEOUT, voiced_cmd, write_config
from tests.pulse import Pulse, running_pulse
from tests.room import REPLY_TEXT, USER_TEXT, erle_db, espeak
from tests.room_process import room_command
from tests.test_aec import first_loud_ms
from tests.test_e2e import ctl, wait_for_status
from voiced.audio import aec as aec_mod
from voiced.sim.server import SimOptions, SimServer
from voiced.sim.voice import speak
from voiced.wire import SAMPLE_RATE

pytestmark = pytest.mark.skipif(not aec_mod.available(),
                                reason="libspeexdsp1 is not installed (scripts/setup.sh)")

ROOM_DELAY_MS = 40
ROOM_GAIN = 0.5  # -6 dB
# the mic's self-noise, as in the synthetic room (tests/room.py noise(): about -80 dBFS):
# on a mic that hands over digital silence the canceller's own output rounds to exact
# zeros (6.5 % of 20 ms blocks ungated, tests/test_aec.py), which the guard below would
# count as the gate's silence
ROOM_NOISE = 3.0
QUESTION_TEXT = "Tell me a story about a lighthouse please."
CHUNK = 480  # the room works in 20 ms blocks
CONVERGED_S = 3.0  # the first seconds of the first reply are the filter learning the room
BARGE_IN_AFTER_S = 5.0  # into the second reply
# the truncate may differ from what the sink played by the audio handed to PortAudio in
# the period the stop lands in (20 ms) and the rounding down to whole ms
TRUNCATE_TOLERANCE_MS = 25
# How far from where the room's timeline puts it a voice is looked for in the uplink. The
# uplink's line slipped +80 ms against the room's once (in the whole suite under two busy
# loops) while the room's line in mic.monitor stayed whole (its own check): in the
# capture path, PortAudio through ALSA's pulse plugin. So each check anchors on the voice
# nearest it, and the figures print every slip; a voice not found within this fails.
MAX_SLIP = SAMPLE_RATE // 2


class Room:
    """tests/room_process.py (``spk.monitor`` -> delay, gain, voices -> ``mic``) as a
    process of its own, with real-time scheduling where it may have it
    (``room_command``)."""

    def __init__(self, pulse: Pulse, tmp: Path) -> None:
        self.tmp = tmp
        self.out = tmp / "room"
        cmd = room_command(["--delay-ms", str(ROOM_DELAY_MS), "--gain", str(ROOM_GAIN),
                            "--noise", str(ROOM_NOISE), "--out", str(self.out)])
        self.proc = subprocess.Popen(
            cmd, env=pulse.env(PULSE_SOURCE="spk.monitor", PULSE_SINK="mic"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(tmp / "room.log", "wb"), text=True)  # noqa: SIM115
        self.at = 0  # room samples so far (as the process last said)
        self.voice_at: list[int] = []
        self.flags: list[tuple[int, int]] = []  # the room's faults (flag, room sample)
        self.saved = threading.Event()
        self.error: BaseException | None = None
        self._voices = 0
        self.thread = threading.Thread(target=self._read, name="room", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                word, *rest = line.split()
                if word == "at":
                    self.at = int(rest[0])
                elif word == "voice":
                    self.voice_at.append(int(rest[0]))
                elif word == "flags":
                    self.flags.append((int(rest[0]), int(rest[1])))
                elif word == "saved":
                    self.saved.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _voice_file(self, voice: np.ndarray) -> Path:
        self._voices += 1
        path = self.tmp / f"voice{self._voices}.npy"
        np.save(path, voice.astype(np.float32))
        return path

    def say(self, voice: np.ndarray) -> None:
        """The user says ``voice`` from the room's next block on."""
        self._send(f"say {self._voice_file(voice)}")

    def say_into_reply(self, voice: np.ndarray, after_s: float) -> None:
        """The user says ``voice`` once the speaker has played ``after_s`` of sound
        (counted in the monitor's samples from the next loud one on)."""
        self._send(f"trigger {self._voice_file(voice)} {int(after_s * SAMPLE_RATE)}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("stop")
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.thread.join(TIMEOUT)
        if not self.saved.is_set() and self.error is None:
            self.error = RuntimeError("the room did not save its recording: "
                                      + (self.tmp / "room.log").read_text()[-2000:])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = np.load(f"{self.out}.npz")
        return (z["monitor"].astype(np.float64), z["echo"].astype(np.float64),
                z["voice"].astype(np.float64))


def offset_of(part: np.ndarray, signal_: np.ndarray) -> tuple[int, float]:
    """Where ``part`` best matches in ``signal_`` (normalized correlation, its score)."""
    n = len(signal_) + len(part)
    xc = np.fft.irfft(np.fft.rfft(signal_, n) * np.conj(np.fft.rfft(part, n)), n)
    valid = xc[:len(signal_) - len(part) + 1]
    energy = np.convolve(signal_ ** 2, np.ones(len(part)), "valid")
    score = valid / np.sqrt(np.maximum(energy, 1e-9) * np.sum(part ** 2))
    at = int(np.argmax(score))
    return at, float(score[at])


async def until(pred: Any, what: str, limit_s: float = TIMEOUT) -> None:
    """Poll ``pred`` (state another thread or the simulator changes) for ``limit_s``."""
    async def poll() -> None:
        while not pred():  # noqa: ASYNC110 - no event to wait on: the room is a thread
            await asyncio.sleep(0.05)
    try:
        await asyncio.wait_for(poll(), limit_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def sent(sim: SimServer, etype: str) -> list[dict[str, Any]]:
    return [e for s in sim.sessions for e in s.sent if e.get("type") == etype]


def received(sim: SimServer, etype: str) -> list[dict[str, Any]]:
    return [e for s in sim.sessions for e in s.received if e.get("type") == etype]


@pytest.mark.alone  # scripts/test.sh: the capture path slips with three workers beside it
@pytest.mark.timeout(600)
async def test_run_cancels_the_echo_of_its_reply_and_hears_a_barge_in_over_it(
        tmp_path: Path) -> None:
    """ERLE, the VAD on the echo alone, the VAD on the user over the echo, and the
    truncate of a voice barge-in, through `voiced run` with ``audio.echo: aec``."""
    question = (espeak(QUESTION_TEXT) * 0.5).astype(np.float64)
    user = (espeak(USER_TEXT, "en-gb+f3", 150) * 0.5).astype(np.float64)
    with running_pulse(tmp_path) as pulse:
        pulse.add_sink("spk", 24000)
        pulse.add_sink("mic", 24000)
        room = Room(pulse, tmp_path)
        # a fixed transcript: pocketsphinx holds the GIL for seconds on a loaded machine,
        # and the simulator shares this process (its pings went unanswered once)
        async with SimServer(SimOptions(transcript=QUESTION_TEXT)) as sim:
            cfg = write_config(tmp_path, sim.url, audio={
                "backend": "pyaudio", "echo": "aec",
                "input": {"device": "pulse", "file": None},
                "output": {"device": "pulse", "file": None}},
                realtime={"instructions": f"Say: {REPLY_TEXT}"})
            env = pulse.env(PULSE_SINK="spk", PULSE_SOURCE="mic.monitor")
            daemon_log = open(tmp_path / "voiced.log", "wb")  # noqa: SIM115, ASYNC230 - closed below; a local file
            proc = await asyncio.create_subprocess_exec(
                *voiced_cmd("run", "-c", str(cfg)), env=env,
                # a file, not a pipe read at the end: a full pipe would block the
                # daemon's logging, on whichever thread logs (the devices' too)
                stdout=daemon_log, stderr=daemon_log)
            seen: list[str] = []
            try:
                await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
                await ctl(cfg, "press")
                await wait_for_status(cfg, lambda s: s["state"] == "listening", seen)
                # turn 1: the question, then the whole reply with nobody talking
                room.say(question)
                await until(lambda: len(sent(sim, "response.done")) >= 1, "reply 1", 120)
                done = sent(sim, "response.done")[0]["response"]
                assert done["status"] == "completed", (
                    f"the echo alone started a turn: reply 1 ended {done['status']} "
                    f"({done.get('status_details')}); {await ctl(cfg, 'status')}; the room's "
                    f"faults {room.flags}")
                await wait_for_status(cfg, lambda s: s["state"] == "listening", seen)
                after_reply_1 = room.at
                await until(lambda: room.at > after_reply_1 + SAMPLE_RATE, "the echo's end")
                st1 = await ctl(cfg, "status")
                starts_1 = len(sent(sim, "input_audio_buffer.speech_started"))
                # turn 2: the question again, and the user talks over the reply
                room.say(question)
                room.say_into_reply(user, BARGE_IN_AFTER_S)
                await until(lambda: received(sim, "conversation.item.truncate"),
                            "the barge-in's truncate", 120)
                st2 = await ctl(cfg, "status")
                # the room runs on until the barge-in voice is all in the uplink (it is
                # found there by correlation) and a second after
                await until(lambda: len(room.voice_at) >= 3
                            and room.at > room.voice_at[2] + len(user) + SAMPLE_RATE,
                            "the barge-in voice's end")
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), TIMEOUT)
                daemon_log.close()
                err = (tmp_path / "voiced.log").read_bytes()
                room.close()
                # the daemon's view, failed or not: the canceller, the devices
                print("\n".join(ln for ln in err.decode().splitlines()
                                if any(w in ln for w in ("echo", "speaker", "microphone",
                                                         "fault")))[-4000:])
            assert proc.returncode == 0, err.decode()[-3000:]
            assert room.error is None, room.error
            assert len(sim.sessions) == 1, "one session: the timeline is one buffer"
            session = sim.sessions[0]
            up = np.frombuffer(bytes(session.appended), "<i2").astype(np.float64)
            events = session.sent
            truncate = received(sim, "conversation.item.truncate")[0]
    monitor, echo, voice = room.arrays()
    # the figures go into every assertion's message as well: a CI log may keep the
    # failing line and not the captured output
    figures: list[str] = []

    def note(line: str) -> None:
        print(line)
        figures.append(line)

    def why() -> str:
        return " | ".join(figures)

    print("\nevents:", [(e["type"], e.get("audio_start_ms", e.get("audio_end_ms")))
                        for e in events if "audio_buffer" in e["type"]
                        or e["type"].startswith("response.") and "delta" not in e["type"]])
    print("the room's faults (flag, room sample; 256: its line in mic.monitor "
          "moved, 512: its streams failed):", room.flags)
    print("voices at", room.voice_at, "room at", room.at, "truncate", truncate)
    td = session.session["audio"]["input"]["turn_detection"]
    prefix = int(td.get("prefix_padding_ms", 300))
    note(f"status after reply 1: echo {st1.get('echo')}, found "
          f"{st1.get('aec_echo_delay_ms')} ms behind the speaker's position, cost "
          f"{st1.get('aec_cost_ms')} ms per block, reference moved "
          f"{st1.get('aec_realigned')} times; after the barge-in {st2.get('aec_realigned')}"
          f"; speaker gaps {st2.get('aec_speaker_gaps')}, mic overflows "
          f"{st2.get('aec_mic_overflows')}; gated blocks {st1.get('aec_gated_blocks')} "
          f"after reply 1, {st2.get('aec_gated_blocks')} at the barge-in; bulk delay from "
          f"{st1.get('aec_bulk_from')}, {st1.get('aec_replayed_blocks')} blocks replayed")

    np.save(tmp_path / "uplink.npy", up.astype(np.int16))  # for a post-mortem
    # the room's timeline in the uplink: each voice (the questions with no speaker sound,
    # the barge-in over reply 2) is found in it; each check anchors on the voice nearest
    q0, u0 = room.voice_at[0], room.voice_at[2]
    qa, qscore = offset_of(question, up[:q0 + 10 * SAMPLE_RATE])
    shift = qa - q0  # uplink sample = room sample + shift (question 1, reply 1)

    def shift_at(voice_: np.ndarray, at: int) -> tuple[int, float]:
        lo = max(0, at + shift - MAX_SLIP)
        found, score = offset_of(voice_, up[lo:at + shift + len(voice_) + MAX_SLIP])
        return lo + found - at, score

    shift2, q2score = shift_at(question, room.voice_at[1])
    shift3, uscore = shift_at(user, u0)  # the barge-in voice, over reply 2
    note(f"room -> uplink shift {shift} samples (question 1, score {qscore:.3f}), "
         f"{shift2 - shift:+d} more at question 2 (score {q2score:.3f}), "
         f"{shift3 - shift2:+d} more at the barge-in voice (score {uscore:.3f}); the room's "
         f"line in mic.monitor {'moved: ' + str(room.flags) if room.flags else 'whole'}")
    assert min(qscore, q2score, uscore) > 0.8, f"a voice not found in the uplink: {why()}"

    # 1. the whole first reply: no speech_started on the echo alone
    loud = np.abs(echo) > 100
    r1 = int(np.argmax(loud[room.voice_at[0] + len(question):])) + room.voice_at[0] \
        + len(question)
    r1_end = int(np.nonzero(loud[:room.voice_at[1]])[0].max()) + 1
    note(f"reply 1: {(r1_end - r1) / SAMPLE_RATE:.1f} s of echo in the mic, "
          f"speech_started events in it: {starts_1 - 1}")
    starts = [e for e in events if e.get("type") == "input_audio_buffer.speech_started"]
    in_reply_1 = [e for e in starts  # (reply 1 is between questions 1 and 2: shift)
                  if r1 + shift <= (e["audio_start_ms"] + prefix) * 24 < r1_end + shift]
    assert in_reply_1 == [], f"the simulator heard speech in the echo alone: {why()}"

    # 2. ERLE after convergence: the echo that reached the mic against what went up
    a, b = r1 + int(CONVERGED_S * SAMPLE_RATE), r1_end
    residual = up[a + shift + 480:b + shift + 480]  # the suppressor's block of delay
    erle = erle_db(echo[a:b], residual)
    # not the convergence gate's silence: the filter's own output is measured
    blocks = residual[:len(residual) // CHUNK * CHUNK].reshape(-1, CHUNK)
    gated = int(np.sum(np.all(blocks == 0, axis=1)))
    note(f"all-zero 20 ms blocks in the ERLE window: {gated} of {len(blocks)}")
    # where the gate's silence fell in reply 1 (s from its echo's start, blocks)
    whole = up[r1 + shift + 480:r1_end + shift + 480]
    zero = np.all(whole[:len(whole) // CHUNK * CHUNK].reshape(-1, CHUNK) == 0, axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], zero.astype(int), [0]])))
    print("silent stretches in reply 1 (s, blocks):",
          [(round(s0 * CHUNK / SAMPLE_RATE, 2), int(s1 - s0))
           for s0, s1 in zip(edges[::2], edges[1::2], strict=True)])
    level = 20 * np.log10(max(float(np.sqrt(np.mean(residual ** 2))), 1e-9) / 32768)
    note(f"ERLE {erle:.1f} dB over {(b - a) / SAMPLE_RATE:.1f} s (residual {level:.1f} "
          f"dBFS RMS)")

    # 3. the user's voice over the echo of reply 2: the VAD within 300 ms of its onset
    onset = u0 + first_loud_ms(user) / 1000 * SAMPLE_RATE  # the clean voice alone
    late = [e for e in starts if (e["audio_start_ms"] + prefix) * 24 >= r1_end + shift]
    assert late, f"the simulator never heard the user over the reply: {why()}"
    heard = (late[-1]["audio_start_ms"] + prefix) * 24 - shift3
    assert len(late) == 2, f"not the question and the barge-in: {late}; {why()}"
    vad_ms = (heard - onset) / SAMPLE_RATE * 1000
    note(f"the simulator's VAD fired {vad_ms:.0f} ms after the clean voice would "
          f"({(heard - u0) / 24:.0f} ms after its first sample)")

    # 4. the truncate: what the sink had played of reply 2 when the reply stopped
    # the reply's first sample in the monitor (the simulator speaks with espeak-ng; its
    # leading samples may be zeros), and the last one before the stop's silence
    reply = np.frombuffer(speak(REPLY_TEXT), "<i2").astype(np.float64)
    m0 = room.voice_at[1]
    seg = monitor[m0:]
    # reply 2 starts between the second question and the barge-in voice, which the room
    # says only after 5 s of it: that is where to look, however long the simulator took
    # to answer (under load, once, 26 s after the question, past a fixed 20 s window)
    first, fscore = offset_of(reply[:2 * SAMPLE_RATE], seg[:room.voice_at[2] - m0])
    # the simulator answers the barge-in too (reply 3) once the user's voice has ended
    # (its VAD waits for silence): reply 2's last sample is before that
    end = room.voice_at[2] + len(user) - m0
    last = int(np.nonzero(np.abs(seg[:end]) > 0)[0].max()) + 1
    assert fscore > 0.9, f"reply 2 not found in the monitor: {fscore:.3f}; {why()}"
    played_ms = (last - first) / SAMPLE_RATE * 1000
    note(f"truncate audio_end_ms {truncate['audio_end_ms']}, the sink played "
         f"{played_ms:.0f} ms of reply 2")

    assert erle >= 25.0 and gated <= len(blocks) // 20, why()
    assert -10 <= vad_ms <= 300, why()
    assert abs(truncate["audio_end_ms"] - played_ms) <= TRUNCATE_TOLERANCE_MS, why()
