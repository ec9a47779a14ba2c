"""The resource bounds against hostile servers are config keys, validated like the rest."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import QUESTION_WAV
from voiced import config
from voiced.errors import ConfigError


def raw(**sections: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "realtime": {"url": "ws://127.0.0.1:8765/v1/realtime"},
        "audio": {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                  "output": {"file": "/tmp/out.wav"}}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return base


def test_the_defaults() -> None:
    s = config.parse(raw(), environ={})
    assert s.audio.max_queued_s == 120.0
    assert s.realtime.max_transcript_bytes == 65_536
    assert s.realtime.max_pending_items == 64


@pytest.mark.parametrize(("section", "key", "value"), [
    ("audio", "max_queued_s", 0), ("audio", "max_queued_s", 1e9),
    ("audio", "max_queued_s", float("nan")), ("audio", "max_queued_s", "lots"),
    ("realtime", "max_transcript_bytes", 10), ("realtime", "max_transcript_bytes", 1.5),
    ("realtime", "max_transcript_bytes", 1 << 40),
    ("realtime", "max_pending_items", 0), ("realtime", "max_pending_items", True),
])
def test_bad_bounds_are_config_errors_naming_the_key(section: str, key: str,
                                                     value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(raw(**{section: {key: value}}), environ={})
    assert [k for k, _ in caught.value.problems] == [f"{section}.{key}"]


def test_the_example_config_documents_every_bound() -> None:
    from tests.conftest import REPO

    text = (REPO / "config" / "voiced.example.yaml").read_text()
    for key in ("max_queued_s:", "max_transcript_bytes:", "max_pending_items:"):
        assert key in text
