"""The last line of defence at every boundary: safe text, throttled logs, contained faults.

Everything that reaches a log line, ``STATUS=`` or ``voiced ctl status`` from outside
(server frames, peers, HTTP replies, files, exception texts) may hold newlines, control
characters, megabytes, or a credential echoed back in a header. Three tools keep that out:

- :func:`printable` escapes control characters and caps the length of one value;
- :class:`SafeFormatter` applies the same to every formatted log record (message *and*
  traceback) and replaces every registered secret with ``<redacted>``, so no call site
  can forget;
- :func:`contain` is the boundary's ``except Exception``: the fault is counted, logged
  rate-limited with its traceback, and never ends the daemon.

Secrets register themselves (``config.Secret`` does on construction), so redaction needs
no list of names. Short values (under 8 characters) are not registered: they would
redact ordinary words, and no real credential is that short.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

TEXT_LIMIT: Final = 300
"""Characters of one outside value shown in a log line or a status detail."""
LINE_LIMIT: Final = 4000
"""Characters of one whole log record (message plus traceback)."""
MIN_SECRET_LEN: Final = 8
THROTTLE_S: Final = 60.0
"""A boundary logs its first fault with a traceback, then at most once a minute."""

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators; tab is escaped too
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None

faults: Counter[str] = Counter()
"""Unexpected exceptions contained so far, by boundary name (``status`` shows them)."""
_last_logged: dict[str, float] = {}
_suppressed: Counter[str] = Counter()


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\u{ord(c):04x}")


def printable(value: object, limit: int = TEXT_LIMIT) -> str:
    """``value`` as one safe line: controls escaped, secrets redacted, at most ``limit``.

    Use it on anything from outside that goes into a message argument, STATUS= or a
    status detail. Never raises (a failing ``str()`` gives a placeholder).
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not break the caller
        text = f"<unprintable {type(value).__name__}>"
    if len(text) > limit * 4:  # do not escape megabytes we will cut anyway
        text = text[: limit * 4]
    # redact first: a secret holding a newline or U+200B no longer matches once escaped
    text = redact(_CONTROL.sub(_escape_one, redact(text)))
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text) - limit} more)"
    return text


def register_secret(value: str) -> None:
    """Have every log record and printable() replace ``value`` with ``<redacted>``."""
    global _secret_pattern
    if len(value) < MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # longest first, so a secret containing another is replaced whole
        parts = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(p) for p in parts))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced."""
    pattern = _secret_pattern
    return pattern.sub("<redacted>", text) if pattern is not None else text


class SafeFormatter(logging.Formatter):
    """A Formatter whose output is one line per record at most ``LINE_LIMIT`` long.

    Newlines inside the message are escaped (a server string cannot forge a second log
    line); a traceback keeps its lines but each is escaped and the whole is capped.
    Registered secrets are redacted everywhere, tracebacks included.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as safe text (see the class)."""
        try:
            message = record.getMessage()
        except Exception as e:  # noqa: BLE001 - a bad %-format must not lose the record
            message = f"{record.msg!r} (unformattable: {type(e).__name__})"
        head = self.formatMessage(_with_message(record, printable(message, LINE_LIMIT)))
        tail = ""
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            tail = record.exc_text
        if record.stack_info:
            tail = f"{tail}\n{self.formatStack(record.stack_info)}" if tail else \
                self.formatStack(record.stack_info)
        if not tail:
            return head
        # redacted whole: a secret with a newline in it spans two lines of a traceback
        lines = [printable(line, LINE_LIMIT) for line in redact(tail).splitlines()]
        body = "\n".join(lines)
        if len(body) > LINE_LIMIT:
            body = f"…{body[-LINE_LIMIT:]}"  # the end of a traceback says most
        return f"{head}\n{body}"


def _with_message(record: logging.LogRecord, message: str) -> logging.LogRecord:
    copy = logging.makeLogRecord(record.__dict__)
    copy.message = message
    return copy


def should_log(key: str, now: float | None = None, every_s: float = THROTTLE_S) -> int | None:
    """Rate limit for one kind of message: None to stay quiet, else how many were skipped.

    The first call for ``key`` returns 0; later calls return None until ``every_s`` has
    passed, then the number of calls suppressed meanwhile.
    """
    now = time.monotonic() if now is None else now
    last = _last_logged.get(key)
    if last is not None and now - last < every_s:
        _suppressed[key] += 1
        return None
    _last_logged[key] = now
    skipped = _suppressed.pop(key, 0)
    return skipped


def note_fault(boundary: str, exc: BaseException, log: logging.Logger) -> None:
    """Count and (rate-limited) log an unexpected exception at ``boundary``."""
    faults[boundary] += 1
    skipped = should_log(f"fault:{boundary}")
    if skipped is None:
        return
    more = f" ({skipped} more since the last report)" if skipped else ""
    log.error("unexpected error at %s, contained%s: %s: %s", boundary, more,
              type(exc).__name__, printable(exc), exc_info=exc)


@contextlib.contextmanager
def contain(boundary: str, log: logging.Logger,
            on_fault: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Run a block whose unexpected exceptions are counted and logged, never raised.

    Cancellation, ``KeyboardInterrupt`` and ``SystemExit`` pass through. ``on_fault``
    lets the caller keep what it was handling (e.g. move a record aside) before going
    on; it is itself contained.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - this is the last line of defence
        note_fault(boundary, exc, log)
        if on_fault is not None:
            try:
                on_fault(exc)
            except Exception as again:  # noqa: BLE001
                note_fault(f"{boundary} (recovery)", again, log)


def reset_for_tests() -> None:
    """Forget counts and rate limits (tests only)."""
    faults.clear()
    _last_logged.clear()
    _suppressed.clear()


# lone surrogates (an emoji cut in half) cannot be encoded as UTF-8; NUL cannot be stored
# in PostgreSQL text or jsonb
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """``value`` with every string made storable (UTF-8, PostgreSQL).

    An emoji split across two deltas (a lone surrogate) becomes U+FFFD, a whole pair
    the character, NUL U+FFFD.
    """
    if isinstance(value, str):
        if not _UNSTORABLE.search(value):
            return value
        value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


class FileRefused(ValueError):
    """A file that is there but not one a boundary reads (the message says why)."""


def read_small_file(path: str | os.PathLike[str], limit: int, *,
                    follow_symlinks: bool = True) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most ``limit`` bytes, and its stat.

    Opened without blocking (a FIFO would hang the reader for good), never read past
    ``limit`` (a 3 GB file costs nothing), and with ``follow_symlinks=False`` never
    through a symlink.

    Raises:
        FileNotFoundError: there is no such file.
        FileRefused: a directory, not a regular file, or too large.
        OSError: it cannot be opened or read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileRefused("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("is not a regular file")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise FileRefused(f"is larger than {limit:,} bytes")
        return data, st
    finally:
        os.close(fd)


def setup_logging(level: str | int) -> None:
    """Log to stderr for journald: level and logger name, no timestamps.

    Here, not in ``voiced.__main__``, so that ``voiced.demo`` and the relay's command can
    set it up without importing the command line module (no import cycle).
    """
    handler = logging.StreamHandler(sys.stderr)
    # one line per record, controls escaped, secrets redacted
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    # websockets logs every connection at INFO and every frame at DEBUG: too chatty
    logging.getLogger("websockets").setLevel(logging.WARNING)


def keep_small_file(path: Path, text: str, what: str, log: logging.Logger) -> bool:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, then a rename).

    For the daemon's small state files (the volume, the echo delay). A failure is logged
    as a warning naming ``what`` and the path, and returns False: the daemon runs on.
    """
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not keep the %s in %s: %s", what, path, e)
        return False
    return True
