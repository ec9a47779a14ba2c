"""Shared test helpers: timeouts, config files, the voiced command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# Every wait in the suite is bounded by this (seconds). It is a guard against a hang,
# not a claim about speed: a wait that passes takes a few seconds here, and a machine
# several times slower (two busy loops per core, other people's test runs) must not
# reach it. Only a failing test ever waits this long.
TIMEOUT = 45.0
MS = 0.001
REPO = Path(__file__).resolve().parent.parent
QUESTION_WAV = REPO / "voiced" / "data" / "question.wav"


def voiced_cmd(*args: str) -> list[str]:
    """The voiced command line, run with this interpreter."""
    return [sys.executable, "-m", "voiced", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would leak secrets or systemd into a test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VOICED_", "NOTIFY_SOCKET", "WATCHDOG_"))
           and k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")}
    # set but empty: `voiced` must not fall back to an installed /etc/voiced/credentials
    env["CREDENTIALS_DIRECTORY"] = ""
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def _no_installed_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI calls ignore a machine's /etc/voiced/credentials too, and no test
    leaves a credential in this process's environment for the tests after it.

    `voiced check-config` run in-process sets $CREDENTIALS_DIRECTORY for the process (a
    reload reads the same place); a test that had removed it with monkeypatch.delenv
    left the new value behind, and a later reload test read a stray key from it.
    """
    from voiced import config

    monkeypatch.setattr(config.secrets, "INSTALLED_CREDENTIALS_DIR",
                        Path("/nonexistent/credentials"))
    for var in ("CREDENTIALS_DIRECTORY", *config.CREDENTIAL_ENV.values(),
                config.CONTROL_SOCKET_ENV):
        # recorded now, so that whatever the test does it is as before afterwards
        # (monkeypatch.delenv of an absent variable records nothing)
        monkeypatch.setenv(var, os.environ.get(var, ""))
        if os.environ[var] == "":
            monkeypatch.delenv(var)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def write_config(tmp_path: Path, url: str, *, input_wav: Path = QUESTION_WAV,
                 **overrides: Any) -> Path:
    """A file-backend config against ``url``; returns its path."""
    cfg: dict[str, Any] = {
        "device_id": "test-device",
        "realtime": {"url": url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "audio": {"backend": "file", "input": {"file": str(input_wav)},
                  "output": {"file": str(tmp_path / "out.wav")}},
        "transcripts": {"sink": "jsonl", "jsonl": {"path": str(tmp_path / "t.jsonl")},
                        "outbox_dir": str(tmp_path / "outbox")},
        "control": {"socket": str(tmp_path / "ctl.sock")},
    }
    cfg = deep_merge(cfg, overrides)
    path = tmp_path / "voiced.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(params=["late", "early"])
def user_transcript(request: pytest.FixtureRequest) -> str:
    """The simulator's order of a user's transcript and the reply to it (upstream's
    usual "late", and "early"): a test of the core that takes this runs under both."""
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Modules whose tests take longest (the kill -9 test alone is over two minutes of real
# daemons): run first, so that under pytest-xdist (scripts/test.sh) they start at once and
# the other workers fill in around them, instead of one of them finishing alone at the end.
# Whole modules move, in their own order, so module fixtures and test order within a module
# stay as they were.
LONGEST_FIRST = ("test_crash_recovery.py", "test_relay_processes.py", "test_aec_pulse.py",
                 "test_wakeword.py", "test_appliance.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every module keeps its own order
