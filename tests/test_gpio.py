"""The button and the orb on gpiozero's mock pins, and the APA102 ring through its SPI seam."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
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
from voiced.core.effects import State
from voiced.errors import ConfigError
from voiced.orb import Animator, Pixel, render
from voiced.orb.apa102 import Apa102Orb, encode_frame
from voiced.orb.gpio import GpioOrb
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor.builders import build_button, build_orb


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

    async def until(self, want: list[str]) -> None:
        """Wait until exactly ``want`` has been seen (an event, not a time)."""
        async def loop() -> None:
            while self.seen != want:
                self.event.clear()
                await self.event.wait()
        try:
            await asyncio.wait_for(loop(), TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"saw {self.seen}, waited for {want}") from None

    async def settle(self, quiet_s: float = 0.3) -> list[str]:
        """Wait until no gesture arrived for ``quiet_s``; return all seen.

        Only for "and nothing else came": a gesture later than that would be missed
        (the test passes wrongly), never a reason for a false failure.
        """
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.event.clear()
            try:
                await asyncio.wait_for(self.event.wait(), quiet_s)
            except TimeoutError:
                return self.seen
        raise AssertionError("gestures never settled")


class Clock:
    """Monotonic time the test sets: the button's debounce window in the test's hands."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# a hold that no scheduling delay can reach: a short press stays short on a loaded machine
NEVER_HELD_S = TIMEOUT


async def button(mode: str = "toggle", pin: str = "17", *, hold_time_s: float = 0.3,
                 clock: Clock | None = None, **kw: Any) -> tuple[ButtonInput, Gestures, Any]:
    factory = MockFactory()
    gestures = Gestures()
    b = ButtonInput(ButtonSettings(pin=pin, mode=mode, hold_time_s=hold_time_s, **kw),
                    gestures, factory, **({"clock": clock} if clock else {})
                    )  # type: ignore[arg-type]
    b.start(asyncio.get_running_loop())
    name = {"17": 17, "GPIO17": 17, "BOARD11": 17}[pin]
    return b, gestures, factory.pin(name)


@pytest.mark.parametrize("pin", ["17", "GPIO17", "BOARD11"])
async def test_a_short_press_is_one_press_whatever_the_pin_name(pin: str) -> None:
    b, gestures, p = await button(pin=pin, hold_time_s=NEVER_HELD_S)
    p.drive_low()  # pull-up: pressed pulls the pin low
    await asyncio.sleep(0.05)
    assert gestures.seen == []  # a press is known only on release (could become long)
    p.drive_high()
    await gestures.until(["press"])
    assert await gestures.settle() == ["press"]
    b.close()


async def test_a_long_press_is_one_long_press_and_no_press() -> None:
    b, gestures, p = await button()
    p.drive_low()
    await gestures.until(["long-press"])  # at once, while still held (hold_time 0.3 s)
    p.drive_high()
    assert await gestures.settle() == ["long-press"]  # and the release adds no press
    b.close()


async def test_bounce_is_one_press() -> None:
    clock = Clock()
    b, gestures, p = await button(bounce_time_s=0.05, clock=clock, hold_time_s=NEVER_HELD_S)
    for _ in range(4):  # a worn switch: edges 5 ms apart, by the button's clock
        p.drive_low()
        clock.now += 0.005
        p.drive_high()
        clock.now += 0.005
    clock.now += 1.0  # quiet since: the level decides once the window has passed
    await gestures.until(["press"])
    assert await gestures.settle() == ["press"]
    b.close()


async def test_edges_a_window_apart_are_two_presses() -> None:
    """The other side of the debounce: presses further apart than bounce_time_s count."""
    clock = Clock()
    b, gestures, p = await button(bounce_time_s=0.05, clock=clock, hold_time_s=NEVER_HELD_S)
    for _ in range(2):
        p.drive_low()
        clock.now += 0.06
        p.drive_high()
        clock.now += 0.06
    await gestures.until(["press", "press"])
    assert await gestures.settle() == ["press", "press"]
    b.close()


async def test_pull_down_button_presses_high() -> None:
    b, gestures, p = await button(pull="down", hold_time_s=NEVER_HELD_S)
    p.drive_high()
    p.drive_low()
    await gestures.until(["press"])
    assert await gestures.settle() == ["press"]
    b.close()


async def test_push_to_talk_is_start_on_press_end_on_release() -> None:
    b, gestures, p = await button(mode="push_to_talk")
    p.drive_low()
    await gestures.until(["talk-start"])
    for _ in range(int(TIMEOUT / 0.01)):  # held past hold_time: gpiozero says "held" ...
        if b._button.is_held:
            break
        await asyncio.sleep(0.01)
    assert b._button.is_held
    p.drive_high()
    await gestures.until(["talk-start", "talk-end"])  # ... and it is still just talking
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

    from voiced.supervisor import builders as hardware

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
    proc = subprocess.Popen(voiced_cmd("test-button", "-c", str(cfg), "--seconds", "600"),
                            env=clean_env(GPIOZERO_PIN_FACTORY="mock"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        # Ctrl-C once it watches the pin (the line's read blocks; TIMEOUT ends a hang)
        first = _readline(proc, TIMEOUT)
        assert first.startswith("press the button on pin 17"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's next stdout line, or an AssertionError after ``timeout_s``."""
    import threading

    got: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not got:
        raise AssertionError(f"no line from {proc.args} within {timeout_s} s")
    return got[0]


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


async def eventually(pred: Callable[[], bool], what: str) -> None:
    """Poll ``pred`` until it holds: the orb's frames come when the loop gets to them."""
    for _ in range(int(TIMEOUT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def animate(driver: Any, state: str, until: Callable[[], bool] | float,
                  what: str = "the pattern") -> tuple[Animator, float]:
    """Run the orb in ``state`` until ``until()`` holds (or for ``until`` seconds); return
    the orb and how long it really ran (the loop may have been late)."""
    orb = Animator(driver, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state(state)
    t0 = time.monotonic()
    if callable(until):
        await eventually(until, what)
    else:
        await asyncio.sleep(until)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return orb, time.monotonic() - t0


def shows(effect: str, level: float, values: list[float]) -> bool:
    """Whether a pin's values (before the close) show one period of ``effect``."""
    if not values:
        return False
    if effect == "solid":
        return round(values[-1], 2) == round(level, 2)
    if effect == "blink":  # full on, then off
        return round(max(values), 2) == round(level, 2) and 0 in values
    if effect == "pulse":  # breathes between 15 % and full
        return (min(values) >= 0.15 * level - 0.01 and max(values) <= level + 0.01
                and max(values) - min(values) > 0.2 * level)
    return max(values) > 0.9 * level  # chase: one pixel lit, fading, lit again


@pytest.mark.parametrize("state", [str(s) for s in State])
async def test_rgb_led_shows_each_state_as_its_pattern(state: str) -> None:
    factory = pwm_factory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="rgb", pins=("5", "6", "13")), factory)
    pins = [factory.pin(n) for n in (5, 6, 13)]
    pattern = DEFAULT_PATTERNS[state]
    want = [c / 255 for c in pattern.color]

    def values(pin: Any) -> list[float]:
        return [v for _, v in pin_values(pin, 1)]

    def all_shown() -> bool:
        return all(shows(pattern.effect, level, values(pin)) for pin, level
                   in zip(pins, want, strict=True) if level > 0)

    # (animate() returns only once every lit pin has shown the pattern)
    orb, ran_s = await animate(driver, state, all_shown, f"{state} on every lit pin")
    for pin, level in zip(pins, want, strict=True):
        if level == 0:
            assert max(values(pin), default=0) == 0
            continue
        assert pin.state == 0  # closing turns the LEDs off
    assert orb.frames_shown <= ran_s * 30 + 2  # at most 30 fps, never a busy loop


def test_the_chase_goes_round_in_pixel_order() -> None:
    """The chase's bright spot passes the pixels in order, once per period (the pure
    rendering: which pixel is brightest at each time, no clock involved)."""
    pattern = DEFAULT_PATTERNS["connecting"]
    n, steps = 6, 60
    brightest = []
    for k in range(steps):
        frame = render(pattern, pattern.period_s * k / steps, n)
        brightest.append(max(range(n), key=lambda i: frame[i][0]))
    assert brightest == sorted(brightest) and set(brightest) == set(range(n))
    assert render(pattern, pattern.period_s, n) == render(pattern, 0.0, n)


async def test_a_ring_shows_the_chase_on_every_pin() -> None:
    factory = pwm_factory()
    pins = [str(n) for n in (5, 6, 13, 19, 26, 21)]
    driver = GpioOrb(LedSettings(driver="gpio", kind="board", pins=tuple(pins)), factory)
    level = max(DEFAULT_PATTERNS["connecting"].color) / 255

    def lit(n: str) -> bool:
        return any(v > 0.9 * level for _, v in pin_values(factory.pin(int(n)), 1))

    await animate(driver, "connecting", lambda: all(lit(n) for n in pins), "each pin lit")
    assert all(factory.pin(int(n)).state == 0 for n in pins)  # dark after the close
    # pixel i is pins[i]: the spot goes round the ring in the order the pins are listed
    ring = GpioOrb(LedSettings(driver="gpio", kind="board", pins=tuple(pins)), factory)
    ring.show([(i / 10, 0.0, 0.0) for i in range(len(pins))])
    assert [factory.pin(int(n)).state for n in pins] == pytest.approx(
        [i / 10 for i in range(len(pins))])
    ring.close()


async def test_a_state_change_shows_on_the_next_frame() -> None:
    factory = pwm_factory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="pwm", pins=("12",)), factory)
    orb = Animator(driver, DEFAULT_PATTERNS, fps=30)
    task = asyncio.create_task(orb.run())
    orb.set_state("thinking")
    pin = factory.pin(12)
    await eventually(lambda: len(pin.states) > 2, "thinking frames")
    before = len(pin.states)
    orb.set_state("listening")
    await eventually(lambda: len(pin.states) > before, "a frame after the change")
    # the very next frame is the new state's: no frame of the old one comes in between
    want = max(DEFAULT_PATTERNS["listening"].color) / 255
    assert pin.states[before].state == pytest.approx(want, abs=0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_single_led_blinks_for_error_and_is_off_when_ready_is_dim() -> None:
    factory = MockFactory()
    driver = GpioOrb(LedSettings(driver="gpio", kind="led", pins=("4",)), factory)

    def values() -> list[float]:
        return [v for _, v in pin_values(factory.pin(4), 1)]

    # 0.25 s period: on, off, on, off
    await animate(driver, "error", lambda: values().count(1.0) >= 2
                  and values().count(0.0) >= 2, "two blinks")


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
        orb, _ = await animate(Broken(), "speaking", 0.3)  # the first frame fails
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
    await eventually(lambda: bool(spi.writes), "a frame on the SPI bus")
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
            await eventually(lambda: blue.state != ready_blue, "the orb following")
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
    from voiced.supervisor.builders import build_policy

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
            # both records, in either order: with a manual turn the reply is asked for
            # at once, and the words may be recognised after it
            await h.wait(lambda: sorted(roles(h)) == ["assistant", "user"])
            types = [e["type"] for e in sim.sessions[0].received]
            commit = types.index("input_audio_buffer.commit")
            assert "response.create" in types[commit:]
            assert next(r for r in h.records if r["role"] == "user")["text"]


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
