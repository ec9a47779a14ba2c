"""The echo canceller through `voiced run` (issue 22): the daemon on the real PortAudio
stack (PulseAudio null sinks), against `voiced sim`, with a room between its speaker and
its mic.

The rig: the daemon plays into the sink ``spk`` and records ``mic.monitor``. The test's
room (a thread) reads ``spk.monitor`` with parec and writes into the sink ``mic`` with
pacat what a mic in a room would hear: the speaker's sound after ``ROOM_DELAY_MS`` at
``ROOM_GAIN`` (-6 dB), plus the user's voice from chosen moments on. The room keeps
one output sample per input sample, so everything it wrote is on one timeline (the
"room's"), and the echo that reached the mic is known exactly. (PulseAudio's
module-loopback as the room glitches too much on this busy machine:
tests/test_aec_pulse.py.)

Positions, not clocks: the simulator's VAD events and the truncate carry audio
positions; the room's timeline is mapped onto the audio the simulator received by
finding the user's question in it (no speaker sound then, so the canceller passes it),
and checked again with the barge-in voice. What the sink played is read in the
recorded ``spk.monitor``.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import queue
import signal
import subprocess
import termios
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TIMEOUT, voiced_cmd, write_config
from tests.pulse import Pulse, running_pulse
from tests.room import REPLY_TEXT, USER_TEXT, erle_db, espeak
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
QUESTION_TEXT = "Tell me a story about a lighthouse please."
CHUNK = 480  # the room works in 20 ms steps
CONVERGED_S = 3.0  # the first seconds of the first reply are the filter learning the room
BARGE_IN_AFTER_S = 5.0  # into the second reply
# the truncate may differ from what the sink played by the audio handed to PortAudio in
# the period the stop lands in (20 ms) and the rounding down to whole ms
TRUNCATE_TOLERANCE_MS = 25


class Room:
    """parec from ``spk.monitor`` -> delay, gain, voices -> pacat into ``mic``."""

    def __init__(self, pulse: Pulse) -> None:
        fmt = ["--format=s16le", "--rate=24000", "--channels=1", "--raw"]
        env = pulse.env()
        self.rec = subprocess.Popen(["parec", "-d", "spk.monitor", "--latency-msec=20",
                                     *fmt], env=env, stdout=subprocess.PIPE)
        self.play = subprocess.Popen(["pacat", "-p", "-d", "mic", "--latency-msec=40",
                                      *fmt], env=env, stdin=subprocess.PIPE)
        self.delay = np.zeros(SAMPLE_RATE * ROOM_DELAY_MS // 1000)
        self.monitor: list[np.ndarray] = []  # what the speaker played (spk.monitor)
        self.echo: list[np.ndarray] = []  # the echo written into the mic
        self.voice: list[np.ndarray] = []  # the user's voice written into the mic
        self.at = 0  # room samples written so far
        self.backlog: list[int] = []  # samples waiting in pacat's pipe before each step
        self._voices: queue.Queue[tuple[np.ndarray, threading.Event | None]] = queue.Queue()
        self._playing: list[tuple[np.ndarray, int]] = []  # voice, its first room sample
        self.voice_at: list[int] = []
        self._trigger: tuple[int, np.ndarray] | None = None  # after n loud samples: voice
        self._loud_since: int | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="room", daemon=True)
        self.thread.start()

    def say(self, voice: np.ndarray) -> None:
        """The user says ``voice`` from the next room step on."""
        self._voices.put((voice, None))

    def say_into_reply(self, voice: np.ndarray, after_s: float) -> None:
        """The user says ``voice`` once the speaker has played ``after_s`` of sound
        (counted in the monitor's samples from the next loud one on)."""
        self._voices.put((voice, threading.Event()))  # marks the trigger
        self._trigger_after = int(after_s * SAMPLE_RATE)

    def _run(self) -> None:
        try:
            assert self.rec.stdout is not None and self.play.stdin is not None
            held = b""
            while not self._stop.is_set():
                data = os.read(self.rec.stdout.fileno(), CHUNK * 2)
                if not data:
                    return
                held += data
                n = len(held) // 2
                if n == 0:
                    continue
                x = np.frombuffer(held[:n * 2], "<i2").astype(np.float64)
                held = held[n * 2:]
                self._step(x)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _step(self, x: np.ndarray) -> None:
        n = len(x)
        while not self._voices.empty():
            voice, mark = self._voices.get_nowait()
            if mark is None:
                self._playing.append((voice, self.at))
                self.voice_at.append(self.at)
            else:
                self._trigger = (self._trigger_after, voice)
                self._loud_since = None
        if self._trigger is not None:
            loud = np.nonzero(np.abs(x) > 300)[0]
            if self._loud_since is None and len(loud):
                self._loud_since = self.at + int(loud[0])
            if self._loud_since is not None and self.at + n - self._loud_since \
                    >= self._trigger[0]:
                self._playing.append((self._trigger[1], self.at))
                self.voice_at.append(self.at)
                self._trigger = None
        self.monitor.append(x)
        # the room's delay grows whenever the machine starves this thread: parec's
        # backlog arrives in a burst and waits in pacat's pipe (measured: 400 ms, then
        # 1.2 s within one run); what waits there is recorded, for the figures
        got = array.array("i", [0])
        assert self.play.stdin is not None
        fcntl.ioctl(self.play.stdin.fileno(), termios.FIONREAD, got)
        self.backlog.append(got[0] // 2)
        line = np.concatenate([self.delay, x])
        echo = line[:n] * ROOM_GAIN
        self.delay = line[n:]
        voice = np.zeros(n)
        for v, start in self._playing:
            part = v[self.at - start:self.at - start + n]
            voice[:len(part)] += part
        self._playing = [(v, s) for v, s in self._playing if self.at + n - s < len(v)]
        out = np.clip(np.round(echo + voice), -32768, 32767).astype("<i2")
        assert self.play.stdin is not None
        self.play.stdin.write(out.tobytes())
        self.play.stdin.flush()
        self.echo.append(echo)
        self.voice.append(voice)
        self.at += n

    def close(self) -> None:
        self._stop.set()
        # the recorder first: its end of stream ends the thread, which may be writing to
        # the player (stopping both at once broke that pipe now and then)
        self.rec.terminate()
        self.thread.join(TIMEOUT)
        self.play.terminate()
        for p in (self.rec, self.play):
            try:
                p.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(TIMEOUT)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self.monitor), np.concatenate(self.echo),
                np.concatenate(self.voice))


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


@pytest.mark.timeout(600)
@pytest.mark.xfail(strict=True, reason=(
    "measured through voiced run on this rig: the echo reaches the canceller 470-690 ms "
    "behind the speaker's reported position (the rig's own parec -> pacat leg is ~20 ms "
    "beside its 40 ms room: the rest is the daemon's ALSA-pulse path); the bulk delay "
    "estimate finds it (score ~1.0) and the convergence gate holds the mic silent until "
    "the filter's echo loss reaches 30 dB, but the delay moves within a run (470 -> 540 "
    "ms) and after a pause, and the simulator's VAD (one 10 ms frame over -40 dBFS) "
    "still starts a turn on the residual echo in most runs. Measured since: the "
    "wander is mostly this room's (its thread starved on the busy machine: pacat "
    "underruns and its pipe holds 400 ms, then 1.2 s), which also breaks the room -> "
    "uplink mapping; the daemon now pairs mic and speaker by PortAudio's DAC/ADC times "
    "and finds the echo 80-165 ms behind in runs without a room jump "
    "(docs/architecture.md). Strict: it fails once the "
    "figures hold, the signal to make aec the default (issue 22)"))
async def test_run_cancels_the_echo_of_its_reply_and_hears_a_barge_in_over_it(
        tmp_path: Path) -> None:
    """ERLE, the VAD on the echo alone, the VAD on the user over the echo, and the
    truncate of a voice barge-in, through `voiced run` with ``audio.echo: aec``."""
    question = (espeak(QUESTION_TEXT) * 0.5).astype(np.float64)
    user = (espeak(USER_TEXT, "en-gb+f3", 150) * 0.5).astype(np.float64)
    with running_pulse(tmp_path) as pulse:
        pulse.add_sink("spk", 24000)
        pulse.add_sink("mic", 24000)
        room = Room(pulse)
        async with SimServer(SimOptions()) as sim:
            cfg = write_config(tmp_path, sim.url, audio={
                "backend": "pyaudio", "echo": "aec",
                "input": {"device": "pulse", "file": None},
                "output": {"device": "pulse", "file": None}},
                realtime={"instructions": f"Say: {REPLY_TEXT}"})
            env = pulse.env(PULSE_SINK="spk", PULSE_SOURCE="mic.monitor")
            proc = await asyncio.create_subprocess_exec(
                *voiced_cmd("run", "-c", str(cfg)), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
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
                    f"({done.get('status_details')}); {await ctl(cfg, 'status')}; pacat's "
                    f"backlog up to {max(room.backlog) // 24} ms")
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
                _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
                room.close()
            assert proc.returncode == 0, err.decode()[-3000:]
            assert room.error is None, room.error
            assert len(sim.sessions) == 1, "one session: the timeline is one buffer"
            session = sim.sessions[0]
            up = np.frombuffer(bytes(session.appended), "<i2").astype(np.float64)
            events = session.sent
            truncate = received(sim, "conversation.item.truncate")[0]
    monitor, echo, voice = room.arrays()
    print("\nevents:", [(e["type"], e.get("audio_start_ms", e.get("audio_end_ms")))
                        for e in events if "audio_buffer" in e["type"]
                        or e["type"].startswith("response.") and "delta" not in e["type"]])
    bl = np.array(room.backlog) / 24
    print(f"pacat pipe backlog ms: min {bl.min():.0f} median {np.median(bl):.0f} max "
          f"{bl.max():.0f}; by 5 s: {[round(float(v)) for v in bl[::250]]}")
    print("voices at", room.voice_at, "room at", room.at, "truncate", truncate)
    td = session.session["audio"]["input"]["turn_detection"]
    prefix = int(td.get("prefix_padding_ms", 300))
    print(f"\nstatus after reply 1: echo {st1.get('echo')}, found "
          f"{st1.get('aec_echo_delay_ms')} ms behind the speaker's position, cost "
          f"{st1.get('aec_cost_ms')} ms per block, reference moved "
          f"{st1.get('aec_realigned')} times; after the barge-in {st2.get('aec_realigned')}")

    # the room's timeline in the uplink: the question (no speaker sound then) is found
    # in it; so is the barge-in voice, and both must agree (no gap in between)
    q0, u0 = room.voice_at[0], room.voice_at[2]
    qa, qscore = offset_of(question, up[:q0 + 10 * SAMPLE_RATE])
    shift = qa - q0  # uplink sample = room sample + shift
    ua, uscore = offset_of(user, up[u0 + shift - SAMPLE_RATE // 2:u0 + shift + len(user)
                                    + SAMPLE_RATE // 2])
    drift = ua - SAMPLE_RATE // 2
    print(f"room -> uplink shift {shift} samples (question score {qscore:.3f}); the "
          f"barge-in voice {drift:+d} samples from there (score {uscore:.3f})")
    assert qscore > 0.8 and uscore > 0.8
    assert abs(drift) <= CHUNK, "the room's timeline moved between the two voices"

    # 1. the whole first reply: no speech_started on the echo alone
    loud = np.abs(echo) > 100
    r1 = int(np.argmax(loud[room.voice_at[0] + len(question):])) + room.voice_at[0] \
        + len(question)
    r1_end = int(np.nonzero(loud[:room.voice_at[1]])[0].max()) + 1
    print(f"reply 1: {(r1_end - r1) / SAMPLE_RATE:.1f} s of echo in the mic, "
          f"speech_started events in it: {starts_1 - 1}")
    starts = [e for e in events if e.get("type") == "input_audio_buffer.speech_started"]
    in_reply_1 = [e for e in starts
                  if r1 + shift <= (e["audio_start_ms"] + prefix) * 24 < r1_end + shift]
    assert in_reply_1 == [], "the simulator heard speech in the echo alone"

    # 2. ERLE after convergence: the echo that reached the mic against what went up
    a, b = r1 + int(CONVERGED_S * SAMPLE_RATE), r1_end
    residual = up[a + shift + 480:b + shift + 480]  # the suppressor's block of delay
    erle = erle_db(echo[a:b], residual)
    # not the convergence gate's silence: the filter's own output is measured
    blocks = residual[:len(residual) // CHUNK * CHUNK].reshape(-1, CHUNK)
    gated = int(np.sum(np.all(blocks == 0, axis=1)))
    print(f"all-zero 20 ms blocks in the ERLE window: {gated} of {len(blocks)}")
    level = 20 * np.log10(max(float(np.sqrt(np.mean(residual ** 2))), 1e-9) / 32768)
    print(f"ERLE {erle:.1f} dB over {(b - a) / SAMPLE_RATE:.1f} s (residual {level:.1f} "
          f"dBFS RMS)")

    # 3. the user's voice over the echo of reply 2: the VAD within 300 ms of its onset
    onset = u0 + first_loud_ms(user) / 1000 * SAMPLE_RATE  # the clean voice alone
    late = [e for e in starts if (e["audio_start_ms"] + prefix) * 24 >= r1_end + shift]
    assert late, "the simulator never heard the user over the reply"
    heard = (late[-1]["audio_start_ms"] + prefix) * 24 - shift
    assert len(late) == 2  # the question and the barge-in
    vad_ms = (heard - onset) / SAMPLE_RATE * 1000
    print(f"the simulator's VAD fired {vad_ms:.0f} ms after the clean voice would "
          f"({(heard - u0) / 24:.0f} ms after its first sample)")

    # 4. the truncate: what the sink had played of reply 2 when the reply stopped
    # the reply's first sample in the monitor (the simulator speaks with espeak-ng; its
    # leading samples may be zeros), and the last one before the stop's silence
    reply = np.frombuffer(speak(REPLY_TEXT), "<i2").astype(np.float64)
    m0 = room.voice_at[1]
    seg = monitor[m0:]
    first, fscore = offset_of(reply[:2 * SAMPLE_RATE], seg[:20 * SAMPLE_RATE])
    last = int(np.nonzero(np.abs(seg) > 0)[0].max()) + 1
    assert fscore > 0.9
    played_ms = (last - first) / SAMPLE_RATE * 1000
    print(f"truncate audio_end_ms {truncate['audio_end_ms']}, the sink played "
          f"{played_ms:.0f} ms of reply 2")

    assert erle >= 25.0 and gated <= len(blocks) // 20
    assert -10 <= vad_ms <= 300
    assert abs(truncate["audio_end_ms"] - played_ms) <= TRUNCATE_TOLERANCE_MS
