"""`realtime.api` and `realtime.live`: validated strictly, every problem at once."""

from __future__ import annotations

import pytest

from voiced import config
from voiced.errors import ConfigError


def test_live_is_off_by_default_and_its_defaults_are_documented() -> None:
    s = config.parse({}, environ={"OPENAI_API_KEY": "k"})
    assert s.realtime.api == "realtime"
    assert s.realtime.live == config.LiveApiSettings()
    assert s.realtime.live.quiet_close_s == 30 and s.realtime.live.model == "gpt-live-1.1"


def test_a_loopback_live_url_needs_no_key_and_the_settings_are_read() -> None:
    s = config.parse({"realtime": {"api": "live", "live": {
        "url": "ws://127.0.0.1:8765/v1/live/sessions", "model": "gpt-live-1",
        "voice": "cedar", "quiet_close_s": 12, "prestart_ms": 0}}}, environ={})
    lv = s.realtime.live
    assert (s.realtime.api, lv.model, lv.voice, lv.quiet_close_s, lv.prestart_ms) == (
        "live", "gpt-live-1", "cedar", 12.0, 0)


def test_bad_live_settings_are_named_each() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"realtime": {"api": "live", "relay": {"agent_id": "a"}, "live": {
            "url": "ws://10.0.0.2/v1/live/sessions", "model": "gpt-realtime-2.1",
            "voice": "nobody", "quiet_close_s": 1, "close_wait_s": "5", "extra": 1}}},
            environ={"OPENAI_API_KEY": "k"})
    keys = {k for k, _ in e.value.problems}
    assert {"realtime.api", "realtime.live.url", "realtime.live.model", "realtime.live.voice",
            "realtime.live.quiet_close_s", "realtime.live.close_wait_s",
            "realtime.live.extra"} <= keys
    with pytest.raises(ConfigError) as e:
        config.parse({"realtime": {"api": "lively"}}, environ={"OPENAI_API_KEY": "k"})
    assert [k for k, _ in e.value.problems] == ["realtime.api"]


def test_the_key_is_required_where_live_sessions_go() -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"realtime": {"api": "live", "url": "ws://127.0.0.1:1/v1/realtime"}},
                     environ={})
    assert any(k == "credentials.openai_api_key" for k, _ in e.value.problems)
    with pytest.raises(ConfigError) as e:  # not a Live path
        config.parse({"realtime": {"live": {"url": "ws://127.0.0.1:1/v1/realtime"}}},
                     environ={"OPENAI_API_KEY": "k"})
    assert [k for k, _ in e.value.problems] == ["realtime.live.url"]
