"""voiced.guard: safe text, one-line log records, redaction, contained faults."""

from __future__ import annotations

import io
import logging

import pytest

from voiced import guard
from voiced.config import Secret


@pytest.fixture(autouse=True)
def _fresh() -> None:
    guard.reset_for_tests()


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(guard.SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger(f"test.guard.{id(out)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log, out


def test_printable_escapes_controls_and_caps() -> None:
    assert guard.printable("bye\nWATCHDOG=trigger") == "bye\\nWATCHDOG=trigger"
    assert guard.printable("a\x00b\u2028c\ud83d") == "a\\u0000b\\u2028c\\ud83d"
    long = guard.printable("x" * 10_000, limit=20)
    assert long.startswith("x" * 20) and "more)" in long and len(long) < 40


def test_printable_survives_a_hostile_str() -> None:
    class Bad:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert guard.printable(Bad()) == "<unprintable Bad>"


def test_a_server_string_cannot_forge_a_log_line() -> None:
    log, out = _logger()
    log.warning("server said %s", "ok\nERROR voiced: forged")
    assert out.getvalue().count("\n") == 1
    assert "\\nERROR voiced: forged" in out.getvalue()


def test_secrets_are_redacted_everywhere_even_in_tracebacks() -> None:
    key = Secret("sk-test-1234567890abcdef")
    log, out = _logger()
    try:
        raise ValueError(f"invalid header: Bearer {key.reveal()}")
    except ValueError:
        log.exception("handshake failed: %s", f"Bearer {key.reveal()}")
    text = out.getvalue()
    assert key.reveal() not in text
    assert text.count("<redacted>") >= 2
    assert guard.printable(f"x {key.reveal()} y") == "x <redacted> y"


def test_a_secret_with_a_newline_or_an_invisible_character_is_still_redacted() -> None:
    """Issue 17, finding 1: escaping first turned the secret into text that no longer
    matched it, so a key with a second line reached the log through a handshake error."""
    keys = [Secret("sk-test-first-line\nsecond-line"), Secret("sk-test-zero\u200bwidth")]
    log, out = _logger()
    for key in keys:
        try:
            raise ValueError(f"invalid Authorization header: Bearer {key.reveal()}")
        except ValueError as e:
            log.exception("handshake failed: %s", e)
        assert guard.printable(f"Bearer {key.reveal()}") == "Bearer <redacted>"
    text = out.getvalue()
    for part in ("first-line", "second-line", "sk-test-zero", "width"):
        assert part not in text, text


def test_short_values_are_not_treated_as_secrets() -> None:
    Secret("abc")
    assert guard.printable("abc") == "abc"


def test_contain_counts_logs_once_a_minute_and_never_raises() -> None:
    log, out = _logger()
    for _ in range(5):
        with guard.contain("frames", log):
            raise RecursionError("deep")
    assert guard.faults["frames"] == 5
    assert out.getvalue().count("unexpected error at frames") == 1


def test_contain_lets_cancellation_through() -> None:
    import asyncio

    log, _ = _logger()
    with pytest.raises(asyncio.CancelledError), guard.contain("x", log):
        raise asyncio.CancelledError


def test_contain_runs_the_recovery_and_contains_its_failure_too() -> None:
    log, _ = _logger()
    seen: list[BaseException] = []

    def recover(exc: BaseException) -> None:
        seen.append(exc)
        raise OSError("disk")

    with guard.contain("outbox", log, on_fault=recover):
        raise KeyError("k")
    assert len(seen) == 1
    assert guard.faults["outbox (recovery)"] == 1


def test_should_log_reports_what_it_skipped() -> None:
    assert guard.should_log("k", now=0.0) == 0
    assert guard.should_log("k", now=1.0) is None
    assert guard.should_log("k", now=2.0) is None
    assert guard.should_log("k", now=61.0) == 2
