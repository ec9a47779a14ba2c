"""SIGHUP: what the settings declare live applies, everything else keeps its running value
until a restart, and the log says which is which."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from gpiozero.pins.mock import MockFactory, MockPWMPin

from tests.conftest import QUESTION_WAV
from tests.test_supervisor import running
from voiced import config
from voiced.config import Pattern
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer
from voiced.supervisor.builders import build_policy

# the declared set, spelt out: a key moving in or out of it is a decision, made here and
# in voiced/config/settings.py together (docs/architecture.md, "systemd")
LIVE = ["realtime.url", "realtime.model", "realtime.voice", "realtime.instructions",
        "realtime.relay.agent_id", "realtime.relay.audio_codec",
        "realtime.turn_detection", "realtime.transcription",
        "realtime.connect_timeout_s", "realtime.keepalive_s", "realtime.reseed_turns",
        "realtime.rollover_margin_s", "realtime.reconnect_min_s", "realtime.reconnect_max_s",
        "realtime.api_key", "leds.patterns", "log_level"]


def test_the_live_keys_are_declared_on_the_settings() -> None:
    assert config.live_keys() == LIVE


def get(settings: Any, key: str) -> Any:
    for part in key.split("."):
        settings = getattr(settings, part)
    return settings


def covered(key: str) -> str | None:
    """The live key that ``key`` is (or is inside), if any."""
    return next((k for k in LIVE if key == k or key.startswith(k + ".")), None)


def base(tmp_path: Path) -> dict[str, Any]:
    return {
        "device_id": "kitchen",
        "realtime": {"url": "ws://127.0.0.1:9/v1/realtime", "relay": {"agent_id": "a1",
                                                                       "conversation_id": "c1"}},
        "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                  "output": {"file": str(tmp_path / "out.wav")}},
        "button": {"pin": "17"},
        "leds": {"driver": "gpio", "kind": "pwm", "pins": ["12"]},
    }


def every_key_changed(tmp_path: Path) -> dict[str, Any]:
    """A change to every live key and to several that are not."""
    raw = base(tmp_path)
    raw["realtime"] = {
        "url": "ws://127.0.0.2:9/v1/other", "model": "gpt-realtime-mini", "voice": "ash",
        "instructions": "Be terse.", "relay": {"agent_id": "a2", "conversation_id": "c2",
                                                        "audio_codec": "opus"},
        "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
        "transcription": {"language": "de"}, "connect_timeout_s": 3, "keepalive_s": 7,
        "reseed_turns": 2, "rollover_margin_s": 120, "reconnect_min_s": 1,
        "reconnect_max_s": 9}
    raw["leds"] = {**raw["leds"], "fps": 10, "patterns": {"ready": {"color": "#102030"}}}
    raw["log_level"] = "debug"
    raw["audio"] = {**raw["audio"], "echo": "full_duplex", "echo_tail_ms": 500}
    raw["button"] = {"pin": "18", "mode": "push_to_talk"}
    raw["device_id"] = "hall"
    raw["transcripts"] = {"max_records": 5}
    return raw


def test_a_reload_takes_the_live_keys_and_keeps_every_other(tmp_path: Path) -> None:
    old = config.parse(base(tmp_path), environ={"OPENAI_API_KEY": "k1"})
    new = config.parse(every_key_changed(tmp_path), environ={"OPENAI_API_KEY": "k2"})
    plan = config.reload_split(old, new)
    changed = config.diff(old, new)
    assert {covered(k) for k in changed} >= set(LIVE)  # the test changes each live key
    for key in changed:
        source = new if covered(key) else old
        assert get(plan.settings, key) == get(source, key), key
    assert plan.live == LIVE
    assert sorted(plan.restart) == sorted(k for k in changed if not covered(k))
    assert {"audio.echo", "audio.echo_tail_ms", "button.mode", "button.pin", "device_id",
            "leds.fps", "realtime.relay.conversation_id",
            "transcripts.max_records"} <= set(plan.restart)
    # the core's policy follows: a live turn-detection change, not a button.mode change
    policy = build_policy(plan.settings)
    assert policy.turn_detection is not None and policy.turn_detection["type"] == "semantic_vad"
    assert policy.half_duplex and policy.echo_tail_ms == 300
    assert (policy.voice, policy.reseed_turns, policy.rollover_margin_s) == ("ash", 2, 120)
    assert config.reload_split(old, old) == config.Reload(old, [], [])


def test_a_relay_switched_on_or_off_waits_for_a_restart(tmp_path: Path) -> None:
    with_relay = config.parse(base(tmp_path), environ={})
    raw = base(tmp_path)
    del raw["realtime"]["relay"]
    direct = config.parse(raw, environ={})
    for old, new in ((with_relay, direct), (direct, with_relay)):
        plan = config.reload_split(old, new)
        assert plan.settings.realtime.relay == old.realtime.relay
        assert plan.restart == ["realtime.relay"] and plan.live == []


@pytest.fixture
def root_level() -> Any:
    """A reload sets the root logger's level: put it back for the tests after."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


async def test_sighup_applies_live_keys_now_and_the_rest_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        root_level: None) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    async with SimServer(SimOptions(pace=4, require_key="key-1")) as sim:
        async with running(tmp_path, sim, from_file=True, pin_factory=factory,
                           environ={"OPENAI_API_KEY": "key-1"}, button={"pin": "17"},
                           leds={"driver": "gpio", "kind": "pwm", "pins": ["12"]}) as h:
            await h.wait(lambda: h.state == State.READY)
            cfg = tmp_path / "voiced.yaml"
            before = h.sup.settings
            raw = yaml.safe_load(cfg.read_text())
            raw["realtime"].update({
                "model": "gpt-realtime-mini", "voice": "ash", "instructions": "Be terse.",
                "turn_detection": {"silence_duration_ms": 900},
                "transcription": {"language": "de"}, "keepalive_s": 7, "reseed_turns": 2,
                "rollover_margin_s": 120})
            raw["leds"]["patterns"] = {"ready": {"effect": "solid", "color": "#102030"}}
            raw["log_level"] = "debug"
            raw["audio"].update({"echo": "full_duplex", "echo_tail_ms": 500})
            raw["button"]["mode"] = "push_to_talk"
            raw["transcripts"]["max_records"] = 5
            cfg.write_text(yaml.safe_dump(raw))
            monkeypatch.setenv("OPENAI_API_KEY", "key-2")  # a new key, put where it is read
            sim.options.require_key = "key-2"
            with caplog.at_level(logging.INFO, logger="voiced.supervisor"):
                h.sup.reload()
            new = config.load(cfg)
            assert h.sup.settings == config.reload_split(before, new).settings
            live = [r.message for r in caplog.records if r.message.startswith("reloaded: ")]
            assert live and live[0].startswith(
                "reloaded: realtime.model, realtime.voice, realtime.instructions, "
                "realtime.turn_detection, realtime.transcription, realtime.keepalive_s, "
                "realtime.reseed_turns, realtime.rollover_margin_s, realtime.api_key, "
                "leds.patterns, log_level ("), live
            later = [r.message for r in caplog.records if "after a restart" in r.message]
            assert len(later) == 1 and later[0].endswith(
                ": audio.echo, audio.echo_tail_ms, button.mode, transcripts.max_records")

            # now: the core's policy, the VAD, the orb, the log level
            policy = h.sup.session.policy
            assert policy == build_policy(h.sup.settings, h.sup.toolbox.declarations())
            assert (policy.voice, policy.reseed_turns, policy.rollover_margin_s) == (
                "ash", 2, 120)
            assert policy.half_duplex and policy.echo_tail_ms == 300  # not yet
            assert policy.turn_detection is not None  # button.mode: still toggle ...
            assert h.sup.button is not None and h.sup.button.settings.mode == "toggle"
            pin = factory.pin(17)  # ... and a press still toggles the mic
            pin.drive_low()
            pin.drive_high()
            await h.wait(lambda: h.state == State.LISTENING)
            assert h.sup.orb.patterns["ready"] == Pattern("solid", (0x10, 0x20, 0x30))
            assert logging.getLogger().level == logging.DEBUG
            assert h.sup.outbox is not None and h.sup.outbox.max_records == 10_000

            # from the next session: the connection's and the session's settings
            h.sup._on_control("long-press")
            await h.wait(lambda: len(sim.sessions) == 2 and h.state == State.READY)
            session = sim.sessions[1]
            req = session.ws.request
            assert req is not None
            assert dict(parse_qsl(urlsplit(req.path).query)) == {"model": "gpt-realtime-mini"}
            assert req.headers["Authorization"] == "Bearer key-2"
            update = next(e["session"] for e in session.received
                          if e["type"] == "session.update")
            assert update["audio"]["output"]["voice"] == "ash"
            assert update["instructions"] == "Be terse."
            assert update["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 900
            assert update["audio"]["input"]["transcription"]["language"] == "de"
            assert h.sup._link is not None and h.sup._link.ws.ping_interval == 7


async def test_sighup_with_nothing_changed_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, root_level: None) -> None:
    async with SimServer(SimOptions(pace=4)) as sim:
        async with running(tmp_path, sim, from_file=True) as h:
            await h.wait(lambda: h.state == State.READY)
            policy = h.sup.session.policy
            with caplog.at_level(logging.INFO, logger="voiced.supervisor"):
                h.sup.reload()
            assert "reloaded: nothing changed" in caplog.messages
            assert h.sup.session.policy == policy

