"""The button and the orb on gpiozero's mock pins, and the APA102 ring through its SPI seam."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from tests.conftest import QUESTION_WAV, TIMEOUT, clean_env, voiced_cmd, write_config
from tests.test_supervisor import roles, running
from voiced import config
from voiced.audio.filebackend import read_wav_as_wire
from voiced.button import ButtonInput
from voiced.config import DEFAULT_PATTERNS, ButtonSettings, LedSettings
from voiced.errors import ConfigError
from voiced.hardware import build_button, build_orb
from voiced.orb import Animator, Pixel, render
from voiced.orb.apa102 import Apa102Orb, encode_frame
from voiced.orb.gpio import GpioOrb
from voiced.session import State
from voiced.sim.server import SimOptions, SimServer


def pwm_factory() -> MockFactory:
    return MockFactory(pin_class=MockPWMPin)


# ------------------------------------------------------------------ the button


class Gestures:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, gesture: str) -> None:
        self.seen.append(gesture)
        self.event.set()

    async def settle(self, quiet_s: float = 0.3) -> list[str]:
        """Wait until no gesture arrived for ``quiet_s``; return all seen."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), quiet_s)
            except TimeoutError:
                return self.seen
        raise AssertionError("gestures never settled")


async def button(mode: str = "toggle", pin: str = "17", **kw: Any) -> tuple[
        ButtonInput, Gestures, Any]:
    factory = MockFactory()
    gestures = Gestures()
    b = ButtonInput(ButtonSettings(pin=pin, mode=mode, hold_time_s=0.3, **kw), gestures,
                    factory)  # type: ignore[arg-type]
    b.start(asyncio.get_running_loop())
    name = {"17": 17, "GPIO17": 17, "BOARD11": 17}[pin]
    return b, gestures, factory.pin(name)


@pytest.mark.parametrize("pin", ["17", "GPIO17", "BOARD11"])
async def test_a_short_press_is_one_press_whatever_the_pin_name(pin: str) -> None:
    b, gestures, p = await button(pin=pin)
    p.drive_low()  # pull-up: pressed pulls the pin low
    await asyncio.sleep(0.05)
    assert gestures.seen == []  # a press is known only on release (could become long)
    p.drive_high()
    assert await gestures.settle() == ["press"]
    b.close()


async def test_a_long_press_is_one_long_press_and_no_press() -> None:
    b, gestures, p = await button()
    p.drive_low()
    await asyncio.sleep(0.6)  # hold_time 0.3 s, held twice as long
    p.drive_high()
    assert await gestures.settle() == ["long-press"]
    b.close()


async def test_bounce_is_one_press() -> None:
    b, gestures, p = await button(bounce_time_s=0.05)
    for _ in range(4):  # a worn switch: edges 5 ms apart
        p.drive_low()
        await asyncio.sleep(0.005)
        p.drive_high()
        await asyncio.sleep(0.005)
    assert await gestures.settle() == ["press"]
    b.close()


async def test_pull_down_button_presses_high() -> None:
    b, gestures, p = await button(pull="down")
    p.drive_high()
    p.drive_low()
    assert await gestures.settle() == ["press"]
    b.close()


async def test_push_to_talk_is_start_on_press_end_on_release() -> None:
    b, gestures, p = await button(mode="push_to_talk")
    p.drive_low()
    await asyncio.sleep(0.6)  # held past hold_time: still just talking
    p.drive_high()
    assert await gestures.settle() == ["talk-start", "talk-end"]
    b.close()


def mock_settings(tmp_path: Path, **raw: Any) -> config.Settings:
    base: dict[str, Any] = {"realtime": {"url": "ws://127.0.0.1:9/v1/realtime"},
                            "audio": {"backend": "file",
                                      "input": {"file": str(Path(__file__).parent.parent
                                                            / "voiced/data/question.wav")},
                                      "output": {"file": str(tmp_path / "o.wav")}}}
    return config.parse({**base, **raw}, environ={}, base_dir=tmp_path)


async def test_a_bad_or_busy_pin_is_an_error_naming_the_key(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    factory = MockFactory()
    s = mock_settings(tmp_path, button={"pin": "GPIO77"})
    with pytest.raises(ConfigError) as e:
        build_button(s, lambda g: None, loop, factory)
    assert e.value.problems[0][0] == "button.pin"
    s = mock_settings(tmp_path, button={"pin": "17"})
    held = build_button(s, lambda g: None, loop, factory)
    with pytest.raises(ConfigError) as e:
        build_button(s, lambda g: None, loop, factory)  # the pin is taken
    assert e.value.problems[0][0] == "button.pin" and "in use" in e.value.problems[0][1]
    assert held is not None
    held.close()


def test_no_pin_library_says_how_to_do_a_dry_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "ws://127.0.0.1:9/v1/realtime", button={"pin": "17"})
    env = clean_env()
    env.pop("GPIOZERO_PIN_FACTORY", None)
    p = subprocess.run(voiced_cmd("run", "-c", str(cfg)), env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 78, p.stderr
    assert "button.pin" in p.stderr and "GPIOZERO_PIN_FACTORY=mock" in p.stderr
    assert "Traceback" not in p.stderr


def test_no_pin_library_with_lgpio_installed_names_its_working_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """lgpio present but failing (its pipes' directory is read-only under the unit): the
    advice is LG_WD, not "install lgpio"."""
    import importlib.machinery
    import importlib.util

    from gpiozero.exc import BadPinFactory

    from voiced import hardware

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery
                        .ModuleSpec("lgpio", None) if name == "lgpio" else real(name, *a))
    monkeypatch.setenv("LG_WD", "/nonexistent/lg")
    msg = hardware._explain(BadPinFactory("Unable to load any default pin factory!"),
                            "button.pin", "button").problems[0][1]
    assert "install lgpio" not in msg, msg
    assert "LG_WD" in msg and "/nonexistent/lg: NOT writable" in msg, msg
    assert "GPIOZERO_PIN_FACTORY=mock" in msg


def test_test_button_runs_on_mock_pins_and_stops_on_sigint(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "ws://127.0.0.1:9/v1/realtime", button={"pin": "17"})
    proc = subprocess.Popen(voiced_cmd("test-button", "-c", str(cfg), "--seconds", "30"),
                            env=clean_env(GPIOZERO_PIN_FACTORY="mock"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# ------------------------------------------------------------------ the orb


def pin_values(pin: Any, since: int) -> list[tuple[float, float]]:
    """(seconds since the first change, value) of the changes from index ``since``.

    MockPin.states holds each change with the time since the change before it.
    """
    out, t = [], 0.0
    for st in pin.states[since:]:
        t += st.timestamp
        out.append((t, float(st.state)))
    return out


async def animate(driver: Any, state: str, seconds: float) -> tuple[Animator, float]:
    orb = Animator(driver, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state(state)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return orb, t0


@pytest.mark.parametrize("state", [str(s) for s in State])
async def test_rgb_led_shows_each_state_as_its_pattern(state: str) -> None:
    factory = pwm_factory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="rgb", pins=("5", "6", "13")), factory)
    pins = [factory.pin(n) for n in (5, 6, 13)]
    orb, _ = await animate(driver, state, 0.7)
    pattern = DEFAULT_PATTERNS[state]
    want = [c / 255 for c in pattern.color]
    for pin, level in zip(pins, want, strict=True):
        values = [v for _, v in pin_values(pin, 1)]
        if level == 0:
            assert max(values, default=0) == 0
            continue
        if pattern.effect == "solid":
            assert round(values[-2], 2) == round(level, 2)  # before close turned it off
        elif pattern.effect == "blink":  # full on, then off, at 1/period_s
            assert round(max(values), 2) == round(level, 2) and 0 in values[:-1]
        elif pattern.effect == "pulse":  # breathes between 15 % and full
            lit = values[:-1]
            assert min(lit) >= 0.15 * level - 0.01 and max(lit) <= level + 0.01
            assert max(lit) - min(lit) > 0.2 * level
        elif pattern.effect == "chase":  # one pixel: lit, fading, lit again
            assert max(values) > 0.9 * level
        assert values[-1] == 0  # closing turns the LEDs off
    assert orb.frames_shown <= 0.7 * 30 + 2  # at most 30 fps, never a busy loop


async def test_a_ring_chases_round_when_connecting() -> None:
    factory = pwm_factory()
    pins = [str(n) for n in (5, 6, 13, 19, 26, 21)]
    driver = GpioOrb(LedSettings(driver="gpio", kind="board", pins=tuple(pins)), factory)
    await animate(driver, "connecting", 1.1)  # period 1.2 s: nearly once round
    brightest = []
    for i, n in enumerate(pins):
        # times count from each pin's creation, and the pins were created together
        values = pin_values(factory.pin(int(n)), 1)
        t, _ = max(values[:-1], key=lambda tv: tv[1])
        brightest.append((t, i))
    order = [i for _, i in sorted(brightest)]
    assert order == sorted(order), order  # the bright spot goes round in pin order


async def test_a_state_change_shows_on_the_next_frame() -> None:
    factory = pwm_factory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="pwm", pins=("12",)), factory)
    orb = Animator(driver, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state("thinking")
    await asyncio.sleep(0.2)
    orb.set_state("listening")
    changed = time.monotonic()
    pin = factory.pin(12)
    want = round(max(DEFAULT_PATTERNS["listening"].color) / 255, 3)
    for _ in range(200):
        if pin.state == pytest.approx(want, abs=0.01):
            break
        await asyncio.sleep(0.005)
    assert time.monotonic() - changed < 1 / 30 + 0.05
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_single_led_blinks_for_error_and_is_off_when_ready_is_dim() -> None:
    factory = MockFactory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="led", pins=("4",)), factory)
    await animate(driver, "error", 0.6)  # 0.25 s period: on, off, on, off
    values = [v for _, v in pin_values(factory.pin(4), 1)]
    assert values.count(1.0) >= 2 and values.count(0.0) >= 2


async def test_a_failing_orb_is_switched_off_once_and_the_daemon_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        pixels = 1
        calls = 0

        def show(self, frame: Sequence[Pixel]) -> None:
            Broken.calls += 1
            raise OSError("SPI write failed")

        def close(self) -> None:
            pass

    with caplog.at_level(logging.ERROR):
        orb, _ = await animate(Broken(), "speaking", 0.3)
    assert Broken.calls == 1 and orb.driver is None
    assert [r.message for r in caplog.records if "orb failed" in r.message] == [
        "the orb failed and is switched off: SPI write failed"]


# ------------------------------------------------------------------ APA102


class FakeSpi:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_apa102_frame_bytes() -> None:
    data = encode_frame([(255, 0, 0), (0, 255, 0), (0, 0, 255)], 7, "bgr")
    assert data == bytes([0, 0, 0, 0,
                          0xE7, 0, 0, 255,
                          0xE7, 0, 255, 0,
                          0xE7, 255, 0, 0,
                          0])
    assert encode_frame([(1, 2, 3)], 31, "rgb")[4:8] == bytes([0xFF, 1, 2, 3])
    assert len(encode_frame([(0, 0, 0)] * 32, 0)) == 4 + 32 * 4 + 2  # end frame n/16
    for bad in ({"brightness": 32}, {"color_order": "rgx"}):
        with pytest.raises(ValueError):
            encode_frame([(0, 0, 0)], **{"brightness": 1, **bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("state", [str(s) for s in State])
async def test_apa102_writes_each_states_first_frame(state: str) -> None:
    spi = FakeSpi()
    factory = MockFactory()
    ring = Apa102Orb(LedSettings(driver="apa102", pixels=12, brightness=10,
                                 color_order="bgr", power_pin="GPIO5"), spi, factory)
    power = factory.pin(5)
    assert power.state == 1  # the HAT's LED power is enabled while the orb runs
    orb = Animator(ring, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state(state)
    for _ in range(200):
        if spi.writes:
            break
        await asyncio.sleep(0.005)
    first = spi.writes[0]
    want = render(DEFAULT_PATTERNS[state], 0.0, 12)
    px = [(round(r * 255), round(g * 255), round(b * 255)) for r, g, b in want]
    assert first == encode_frame(px, 10, "bgr")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spi.writes[-1] == encode_frame([(0, 0, 0)] * 12, 0, "bgr")  # dark at close
    assert spi.closed and power.state == 0


async def test_missing_spi_device_is_an_error_naming_the_key(tmp_path: Path) -> None:
    s = mock_settings(tmp_path, leds={"driver": "apa102", "pixels": 12})
    with pytest.raises(ConfigError) as e:
        build_orb(s, MockFactory(), spi=None)  # no spidev module / no /dev/spidev0.0
    key, msg = e.value.problems[0]
    assert key.startswith("leds.spi_bus")
    assert "spidev" in msg or "SPI" in msg


def test_test_leds_prints_every_state(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "ws://127.0.0.1:9/v1/realtime",
                       leds={"driver": "gpio", "kind": "rgb", "pins": ["5", "6", "13"]})
    p = subprocess.run(voiced_cmd("test-leds", "-c", str(cfg), "--seconds", "0.1"),
                       env=clean_env(GPIOZERO_PIN_FACTORY="mock",
                                     GPIOZERO_MOCK_PIN_CLASS="mockpwmpin"),
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    for state in State:
        assert str(state) in p.stdout, (state, p.stdout)


# ------------------------------------------------------------------ the daemon


async def test_a_physical_press_starts_listening_and_the_orb_follows(tmp_path: Path) -> None:
    factory = pwm_factory()
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, pin_factory=factory, button={"pin": "17"},
                           leds={"driver": "gpio", "kind": "rgb",
                                 "pins": ["5", "6", "13"]}) as h:
            await h.wait(lambda: h.state == State.READY)
            button_pin, blue = factory.pin(17), factory.pin(13)
            ready_blue = blue.state
            button_pin.drive_low()
            button_pin.drive_high()
            await h.wait(lambda: h.state == State.LISTENING)
            for _ in range(200):
                if blue.state != ready_blue:
                    break
                await asyncio.sleep(0.01)
            assert blue.state == pytest.approx(1.0)  # listening: (0, 120, 255)
            await h.wait(lambda: h.state == State.SPEAKING)
            button_pin.drive_low()  # a press while the assistant speaks interrupts it
            button_pin.drive_high()
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            assert h.records[1]["metadata"]["interrupted"] is True
            assert h.state == State.LISTENING
            assert len(sim.sessions) == 1


async def test_push_to_talk_from_button_mode_is_manual_turns(tmp_path: Path) -> None:
    """button.mode: push_to_talk makes the session's turns manual (no server VAD): hold,
    speak, release commits the words and asks for the reply."""
    from voiced.supervisor import build_policy

    assert build_policy(mock_settings(tmp_path, button={"pin": "17", "mode": "push_to_talk"})
                        ).turn_detection is None
    factory = MockFactory()
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, speed=4, pin_factory=factory,
                           button={"pin": "17", "mode": "push_to_talk"}) as h:
            await h.wait(lambda: h.state == State.READY)
            update = sim.sessions[0].received[0]
            assert update["type"] == "session.update"
            assert update["session"]["audio"]["input"]["turn_detection"] is None
            pin = factory.pin(17)
            pin.drive_low()  # held: the user speaks the whole question
            await h.wait(lambda: h.state == State.LISTENING)
            question = read_wav_as_wire(QUESTION_WAV)
            await h.wait(lambda: h.sup.session.counters.appended_samples * 2 >= len(question))
            assert not any(e["type"] == "input_audio_buffer.commit"
                           for e in sim.sessions[0].received)  # nothing before the release
            pin.drive_high()
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            types = [e["type"] for e in sim.sessions[0].received]
            commit = types.index("input_audio_buffer.commit")
            assert "response.create" in types[commit:]
            assert h.records[0]["text"]


async def test_a_press_is_acknowledged_with_a_flash_over_any_pattern() -> None:
    factory = pwm_factory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="pwm", pins=("12",)), factory)
    orb = Animator(driver, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state("ready")  # a dim blue: the flash must stand out
    await asyncio.sleep(0.2)
    pin = factory.pin(12)
    before = len(pin.states)
    orb.acknowledge(0.15)
    await asyncio.sleep(0.4)
    values = [v for _, v in pin_values(pin, before)]
    assert values[0] == 1.0  # full white at once
    assert values[-1] < 1.0  # then the pattern again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
