"""Hands-free in `voiced run` (issue 22): earcons, the wake word and the echo canceller's
wiring, through the daemon as a subprocess against the simulator, and through the real
PortAudio stack on PulseAudio null sinks."""

from __future__ import annotations

import asyncio
import signal
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TIMEOUT, clean_env, voiced_cmd, write_config
from tests.pulse import running_pulse
from tests.test_e2e import ctl, read_jsonl, wait_for_status
from voiced import config
from voiced.audio import earcons
from voiced.audio.pipeline import SpeakerMix, mix_pcm16
from voiced.audio.wakeword import Detection
from voiced.hands_free import HandsFree
from voiced.sim.server import SimOptions, SimServer


def settings(**over: Any) -> config.Settings:
    return config.parse({"realtime": {"url": "ws://127.0.0.1:9"}, **over},
                        require_secrets=False)


class FakeSession:
    """The core's half duplex switch, as the supervisor hands it over."""

    def __init__(self) -> None:
        self.policies: list[bool] = []

    def half_duplex(self, on: bool) -> None:
        self.policies.append(on)


class ScriptedDetector:
    """A ``WakeWordDetector`` the test controls: a frame whose first sample is 1234 is a
    wake word; 1 s of audio fed after a detection is its refractory period."""

    rate = 24_000
    models = ("test",)

    def __init__(self) -> None:
        self.fed = 0
        self._quiet = 0

    def feed(self, pcm: bytes) -> list[Detection]:
        self.fed += 1
        self._quiet -= len(pcm) // 2
        if pcm[:2] == (1234).to_bytes(2, "little", signed=True) and self._quiet <= 0:
            self._quiet = 24_000
            return [Detection("test", "Test", 0.9, self.fed * 20.0)]
        return []

    def reset(self) -> None:
        self._quiet = 0


def hands(detector: ScriptedDetector | None = None, presses: list[int] | None = None,
          **over: Any) -> tuple[HandsFree, FakeSession]:
    sess = FakeSession()
    presses = presses if presses is not None else []
    h = HandsFree(settings(**over), sess.half_duplex, press=lambda: presses.append(1),
                  apply=lambda: None, volume=lambda: 100, detector=detector)
    return h, sess


def frame(first: int = 0) -> bytes:
    return first.to_bytes(2, "little", signed=True) + bytes(958)


async def test_a_wake_word_presses_only_when_not_listening_and_pauses_while_speaking() -> None:
    det = ScriptedDetector()
    presses: list[int] = []
    h, _ = hands(det, presses)

    class Sink:
        output_filter: Any = None

    h.install(object(), Sink(), asyncio.get_running_loop())
    h.on_state("ready", {"mic": "off", "connected": True, "conversation_id": "c"})
    h.mic_frame(frame(1234))
    await asyncio.sleep(0)
    assert presses == [1]  # mic off: a detection opens it like a press
    h.on_state("listening", {"mic": "on", "connected": True, "conversation_id": "c"})
    for _ in range(60):  # past the refractory period
        h.mic_frame(frame())
    h.mic_frame(frame(1234))
    await asyncio.sleep(0)
    assert presses == [1]  # listening already: a press would close the mic
    h.on_state("speaking", {"mic": "on", "connected": True, "conversation_id": "c"})
    fed = det.fed
    h.mic_frame(frame(1234))
    await asyncio.sleep(0)
    assert det.fed == fed and presses == [1]  # half duplex: paused while it speaks
    assert len(h.detections) == 1


async def test_with_aec_the_wake_word_hears_over_the_reply_and_a_bypass_is_half_duplex(
        ) -> None:
    pytest.importorskip("voiced.audio.aec").available() or pytest.skip("no libspeexdsp")
    det = ScriptedDetector()
    presses: list[int] = []
    h, sess = hands(det, presses, audio={"echo": "aec"})

    class Dev:
        frame_filter: Any = None
        output_filter: Any = None
        overflows = 3

    dev = Dev()
    h.install(dev, dev, asyncio.get_running_loop())
    assert h.echo is not None and dev.frame_filter is not None
    st = h.status()
    assert st["aec_mic_overflows"] == 3 and st["aec_speaker_gaps"] == 0
    h.on_state("speaking", {"mic": "on", "connected": True, "conversation_id": "c"})
    h.mic_frame(frame(1234))
    await asyncio.sleep(0)
    assert presses == [1]  # barge in by wake word over the reply
    h.on_bypass(True, "too slow")
    assert sess.policies == [True] and h.status()["echo"].startswith("aec bypassed")
    fed = det.fed
    h.mic_frame(frame(1234))
    assert det.fed == fed  # bypassed: no better than half duplex, so paused
    h.on_bypass(False, "resumed")
    assert sess.policies == [True, False] and h.status()["echo"] == "aec"


async def test_each_event_plays_its_earcon_at_gain_times_volume_and_off_switches() -> None:
    h, _ = hands(earcons={"enabled": True, "gain": 0.8, "events": {"error": 0}})

    class Sink:
        output_filter: Any = None

    sink = Sink()
    h.install(object(), sink, asyncio.get_running_loop())
    h._volume = lambda: 50
    h.on_state("connecting", {"mic": "off", "connected": False, "conversation_id": "a"})
    h.on_state("ready", {"mic": "off", "connected": True, "conversation_id": "a"})
    assert h.earcons_played == {}  # the first connection is no reconnect
    h.on_state("listening", {"mic": "on", "connected": True, "conversation_id": "a"})
    out = sink.output_filter(bytes(24000))  # a second of the speaker's silence
    want = earcons.render("listening_started", round(0.8 * 0.25, 2))
    assert out.startswith(want) and not any(out[len(want):])
    h.on_state("ready", {"mic": "off", "connected": True, "conversation_id": "a"})
    h.on_state("connecting", {"mic": "off", "connected": False, "conversation_id": "a"})
    h.on_state("ready", {"mic": "off", "connected": True, "conversation_id": "a"})
    h.on_state("error", {"mic": "off", "connected": False, "conversation_id": "a"})
    h.on_state("connecting", {"mic": "off", "connected": False, "conversation_id": "b"})
    h.on_state("ready", {"mic": "off", "connected": True, "conversation_id": "b"})
    assert h.earcons_played == {"listening_started": 1, "listening_stopped": 1,
                                "reconnected": 1, "new_conversation": 1}  # error: off
    off, _ = hands()
    off.install(object(), Sink(), asyncio.get_running_loop())
    off.on_state("listening", {"mic": "on", "connected": True, "conversation_id": "a"})
    assert off.earcons_played == {}  # earcons.enabled defaults to false


async def test_half_duplex_keeps_an_earcon_out_of_the_uplink_even_through_the_room() -> None:
    h, _ = hands(earcons={"enabled": True}, audio={"echo": "half_duplex", "echo_tail_ms": 100})

    class Sink:
        output_filter: Any = None

    sink = Sink()
    h.install(object(), sink, asyncio.get_running_loop())
    h.on_state("listening", {"mic": "on", "connected": True, "conversation_id": "a"})
    loud = frame(9000)
    assert h.mic_frame(loud) == bytes(960)  # the earcon is queued: the mic hears it
    while sink.output_filter.playing:
        sink.output_filter(bytes(960))
    tail = [h.mic_frame(loud) for _ in range(8)]
    assert tail[:5] == [bytes(960)] * 5 and tail[5] == loud  # 100 ms tail, then open


def test_mixing_clips_and_keeps_the_rest() -> None:
    a = np.array([30000, -30000, 5, 7], "<i2").tobytes()
    b = np.array([10000, -10000], "<i2").tobytes()
    assert np.frombuffer(mix_pcm16(a, b), "<i2").tolist() == [32767, -32768, 5, 7]
    mix = SpeakerMix(object())
    mix.add(earcons.render("error", 1.0))
    assert mix.playing and mix.earcon_samples == len(earcons.render("error", 1.0)) // 2


async def test_run_plays_every_event_earcon_into_the_speaker_and_none_to_the_server(
        tmp_path: Path) -> None:
    async with SimServer(SimOptions()) as sim:
        cfg = write_config(tmp_path, sim.url, earcons={"enabled": True, "gain": 0.6})
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=clean_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        seen: list[str] = []
        try:
            await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
            await ctl(cfg, "press")  # listening started; the question plays into the mic
            await wait_for_status(  # the reply was heard and the mic listens again
                cfg, lambda s: len(read_jsonl(tmp_path / "t.jsonl")) >= 2
                and s["state"] == "listening", seen)
            await ctl(cfg, "press")  # listening stopped
            await wait_for_status(cfg, lambda s: s["mic"] == "off", seen)
            sim.drop_connections()  # an outage; reconnected
            await wait_for_status(
                cfg, lambda s: s.get("earcons_played", {}).get("reconnected") == 1, seen)
            await ctl(cfg, "long-press")  # new conversation
            st = await wait_for_status(
                cfg, lambda s: s.get("earcons_played", {}).get("new_conversation") == 1
                and s["connected"], seen)
            # the last earcon handed to the WAV (a fixed sleep was too short when busy)
            await wait_for_status(cfg, lambda s: not s["earcon_pending"], seen)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert proc.returncode == 0, err.decode()
        assert st["earcons_played"] == {"listening_started": 1, "listening_stopped": 1,
                                        "reconnected": 1, "new_conversation": 1}
        with wave.open(str(tmp_path / "out.wav"), "rb") as w:
            out = w.readframes(w.getnframes())
        at = {}
        for name in ("listening_started", "listening_stopped", "reconnected",
                     "new_conversation"):
            pcm = earcons.render(name, 0.6)
            at[name] = out.find(pcm)
            assert at[name] >= 0, f"{name} is not in the speaker's output"
        assert at["listening_started"] < at["listening_stopped"] < at["reconnected"] \
            < at["new_conversation"]
        # nothing of any earcon went up: no appended audio correlates with one
        up = np.frombuffer(b"".join(bytes(s.appended) for s in sim.sessions), "<i2")
        for name in earcons.EARCONS:
            e = np.frombuffer(earcons.render(name, 1.0), "<i2").astype(np.float64)
            assert not _contains(up.astype(np.float64), e), name


def _contains(signal_: np.ndarray, part: np.ndarray) -> bool:
    """Whether ``part`` occurs in ``signal_`` at any scale (normalized correlation > 0.9)."""
    if len(signal_) < len(part):
        return False
    n = len(signal_) + len(part)
    xc = np.fft.irfft(np.fft.rfft(signal_, n) * np.conj(np.fft.rfft(part, n)), n)
    energy = np.convolve(signal_ ** 2, np.ones(len(part)), "valid")
    loud = energy > 100.0 ** 2 * len(part)  # silence correlates with nothing
    score = xc[:len(energy)][loud] / np.sqrt(energy[loud] * np.sum(part ** 2))
    return bool(score.size and np.max(score) > 0.9)



async def test_run_wakes_on_a_spoken_wake_word_through_pulseaudio(tmp_path: Path) -> None:
    """espeak-ng says other sentences, then "okay nabu", into the mic's null sink; the
    daemon (pyaudio backend, the real detector) opens the mic on the wake word only, and
    the listening-started earcon reaches the speaker's sink."""
    pytest.importorskip("pymicro_wakeword")
    from tests.room import espeak

    other = np.concatenate([espeak("turn the lights on in the kitchen please"),
                            np.zeros(12000, np.int16),
                            espeak("what is the weather like tomorrow")])
    wake = espeak("okay nabu")
    for name, pcm in (("other", other), ("wake", wake)):
        with wave.open(str(tmp_path / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(24000)
            w.writeframes(np.concatenate([pcm, np.zeros(12000, np.int16)]).tobytes())
    with running_pulse(tmp_path) as pulse:
        pulse.add_sink("spk", 24000)
        pulse.add_sink("mic", 24000)
        rec = await asyncio.create_subprocess_exec(
            "parec", "-d", "spk.monitor", "--latency-msec=50", "--format=s16le",
            "--rate=24000", "--channels=1", "--raw", env=pulse.env(),
            stdout=asyncio.subprocess.PIPE)
        async with SimServer(SimOptions()) as sim:
            cfg = write_config(tmp_path, sim.url, audio={
                "backend": "pyaudio", "input": {"device": "pulse", "file": None},
                "output": {"device": "pulse", "file": None}},
                wake_word={"enabled": True, "models": ["okay_nabu"]},
                earcons={"enabled": True, "gain": 0.6})
            env = pulse.env(PULSE_SINK="spk", PULSE_SOURCE="mic.monitor")
            proc = await asyncio.create_subprocess_exec(
                *voiced_cmd("run", "-c", str(cfg)), env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            seen: list[str] = []
            try:
                await wait_for_status(cfg, lambda s: s["state"] == "ready", seen)
                play = await asyncio.create_subprocess_exec(
                    "paplay", "-d", "mic", str(tmp_path / "other.wav"), env=pulse.env())
                await asyncio.wait_for(play.wait(), TIMEOUT * 2)
                st = await ctl(cfg, "status")
                assert st["mic"] == "off" and st["wake_word"]["detections"] == 0
                play = await asyncio.create_subprocess_exec(
                    "paplay", "-d", "mic", str(tmp_path / "wake.wav"), env=pulse.env())
                await asyncio.wait_for(play.wait(), TIMEOUT * 2)
                st = await wait_for_status(cfg, lambda s: s["mic"] == "on", seen)
                assert st["wake_word"]["detections"] == 1
                assert st["earcons_played"].get("listening_started") == 1
                e = np.frombuffer(earcons.render("listening_started", 0.6),
                                  "<i2").astype(np.float64)
                heard = bytearray()
                assert rec.stdout is not None

                async def until_heard() -> None:  # parec hands its buffer over late
                    while not _contains(np.frombuffer(heard[:len(heard) // 2 * 2], "<i2")
                                        .astype(np.float64), e):
                        heard.extend(await rec.stdout.read(48000))  # type: ignore[union-attr]
                await asyncio.wait_for(until_heard(), TIMEOUT)
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
                rec.terminate()
                await asyncio.wait_for(rec.communicate(), TIMEOUT)
        assert proc.returncode == 0, err.decode()[-3000:]
        assert "wake word 'Okay Nabu' heard" in err.decode()


@pytest.mark.parametrize("content", [b"abc\n", b"-5\n", b"1001\n", b"9" * 80, b"\xff\xfe",
                                     b"12 34\n", b"", "fifo", "dir"])
async def test_a_hostile_echo_delay_file_is_ignored_with_a_clear_line(
        tmp_path: Path, content: bytes | str, caplog: pytest.LogCaptureFixture) -> None:
    """The state file with the bulk echo delay is outside input: garbage, out of range,
    too long, not a regular file (a FIFO would block the reader for good). Each is
    ignored with one warning naming the file, and the delay is estimated afresh."""
    import os
    from types import SimpleNamespace

    path = tmp_path / "echo_delay"
    if content == "fifo":
        os.mkfifo(path)
    elif content == "dir":
        path.mkdir()
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    h = HandsFree(settings(audio={"echo": "aec"}), FakeSession().half_duplex,
                  press=lambda: None, apply=lambda: None, volume=lambda: 100,
                  echo_delay_file=path)
    sink = SimpleNamespace(rate=24000, channels=1, dac_time=0.0, output_filter=None)
    h.install(SimpleNamespace(adc_time=0.0, frame_filter=None), sink,
              asyncio.get_running_loop())
    assert h.echo is not None and not h.echo.bulk_found and h.echo.bulk == 0
    lines = [r.getMessage() for r in caplog.records if "echo delay file" in r.getMessage()]
    assert len(lines) == 1 and str(path) in lines[0] and "estimated afresh" in lines[0]
    assert h.status()["aec_bulk_from"] == "none"


async def test_the_echo_delay_found_is_kept_and_the_next_start_begins_from_it(
        tmp_path: Path) -> None:
    """Once the canceller has estimated the bulk delay, the next state the supervisor
    shows writes it beside the volume file; the next start (and a device reopened)
    presets the canceller from it, so the first reply needs no estimate to begin
    cancelling. No file: nothing preset."""
    from types import SimpleNamespace

    path = tmp_path / "echo_delay"
    loop = asyncio.get_running_loop()

    def start() -> HandsFree:
        h = HandsFree(settings(audio={"echo": "aec"}), FakeSession().half_duplex,
                      press=lambda: None, apply=lambda: None, volume=lambda: 100,
                      echo_delay_file=path)
        sink = SimpleNamespace(rate=24000, channels=1, dac_time=0.0, output_filter=None)
        h.install(SimpleNamespace(adc_time=0.0, frame_filter=None), sink, loop)
        return h

    h = start()
    assert h.echo is not None and not h.echo.bulk_found
    h.on_state("listening", {"mic": "on"})
    assert not path.exists()  # nothing found yet: nothing kept
    h.echo.process(bytes(h.echo.frame_bytes), 24000, timed=True)  # a mic frame
    h.echo._realign(24 * 130)  # an estimate: 130 ms, so the reference is held back 80
    h.echo._realign(24 * 130)
    assert h.echo.bulk == 24 * 80 and h.echo.bulk_estimated
    h.on_state("speaking", {"mic": "on"})
    assert path.read_text() == "80\n"
    assert h.status()["aec_bulk_from"] == "estimated"
    again = start()
    assert again.echo is not None and again.echo.bulk == 24 * 80 and again.echo.bulk_found
    assert not again.echo.bulk_estimated and again.status()["aec_bulk_from"] == "kept"
    again.devices_reopened()
    assert again.echo.bulk == 24 * 80 and again.echo.bulk_found


async def test_under_aec_the_speaker_idles_only_while_the_mic_is_off() -> None:
    """Issue 21 stops the speaker's stream ``speaker_idle_s`` after playback. Under
    ``audio.echo: aec`` it ran for good (a restart is an echo path change, and the
    reference must run between replies), so the speaker never idled in ``ready``. Now it
    is held awake while the mic's stream runs and idles after its grace once the mic
    stops; without the canceller nothing holds it."""
    from types import SimpleNamespace

    from voiced.audio.pyaudio_backend import PyAudioSink
    from voiced.config import AudioEndpointSettings

    loop = asyncio.get_running_loop()
    for echo, held in (("aec", True), ("half_duplex", False)):
        sink = PyAudioSink(AudioEndpointSettings(), idle_s=0.05)
        sink._loop, sink._stream = loop, object()
        wishes: list[bool] = []

        def wish(on: bool, sink: PyAudioSink = sink, wishes: list[bool] = wishes) -> None:
            wishes.append(on)
            sink._running = on

        sink._set_running = wish  # type: ignore[method-assign]
        h, _ = hands(audio={"echo": echo, "backend": "pyaudio"})
        h.install(SimpleNamespace(adc_time=0.0, frame_filter=None), sink, loop)
        h.capturing(True)  # a press: the mic's stream starts
        sink._idle_later()  # a reply has drained
        await asyncio.sleep(0.2)
        assert wishes == ([True] if held else [False]), (echo, wishes)
        h.capturing(False)  # back in ready: the mic's stream stops
        await asyncio.sleep(0.2)
        assert wishes[-1] is False, (echo, wishes)


def test_echo_auto_resolves_by_the_machine_and_the_mic() -> None:
    """``audio.echo: auto`` (the default): aec where libspeexdsp loads and the mic has no
    echo cancellation of its own; full duplex for a mic declared echo-cancelling
    (``audio.input.hardware_aec``); half duplex without the library, and on the file
    backend (no acoustic path: as before). An explicit policy stays as it is."""
    from tests.test_aec import without_native_libraries
    from voiced.audio import aec as aec_mod
    from voiced.errors import ConfigError

    def audio(**over: Any) -> config.AudioSettings:
        a: dict[str, Any] = {"backend": "pyaudio", "input": {"device": "default"},
                             "output": {"device": "default"}, **over}
        return settings(audio=a).audio

    a = audio()
    assert (a.echo_setting, a.echo) == ("auto", "aec") and "libspeexdsp" in a.echo_reason
    a = audio(input={"device": "default", "hardware_aec": True})
    assert a.echo == "full_duplex" and "hardware_aec" in a.echo_reason
    assert audio(echo="half_duplex").echo == "half_duplex"
    assert audio(echo="full_duplex", input={"hardware_aec": True}).echo == "full_duplex"
    with without_native_libraries(aec_mod):
        a = audio()
        assert a.echo == "half_duplex" and "apt install libspeexdsp1" in a.echo_reason
    with pytest.raises(ConfigError, match="hardware_aec"):
        audio(input={"hardware_aec": "yes please"})
    with pytest.raises(ConfigError, match="hardware_aec"):
        audio(output={"hardware_aec": True})  # a speaker cancels nothing: unknown there


def test_file_backend_keeps_half_duplex_under_auto(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(bytes(480))
    a = settings(audio={"backend": "file", "input": {"file": str(wav)},
                        "output": {"file": str(tmp_path / "out.wav")}}).audio
    assert (a.echo_setting, a.echo) == ("auto", "half_duplex") and "file" in a.echo_reason
