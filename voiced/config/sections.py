"""Reading one YAML mapping: problems collected by dotted key.

And the value checks the sections share (loopback hosts, paths, URLs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, cast
from urllib.parse import urlsplit

from voiced import guard

# ---------------------------------------------------------------------------------------
# Validation helpers


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []

    def add(self, key: str, msg: str) -> None:
        self.items.append((key, msg))

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.items)

    def warn(self, key: str, msg: str) -> None:
        if (key, msg) not in self.warnings:
            self.warnings.append((key, msg))


_MISSING: Final = object()
_C = TypeVar("_C", bound=str)


class _Section:
    """A YAML mapping being read; records unknown keys and bad values as problems."""

    def __init__(self, data: object, path: str, problems: _Problems) -> None:
        self.path = path
        self.problems = problems
        self.used: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            problems.add(path or "(top level)", f"expected a mapping, got {_kind(data)}")
            data = {}
        self.data: Mapping[Any, Any] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> object:
        self.used.add(name)
        return self.data.get(name, _MISSING)

    def bad(self, name: str, msg: str) -> None:
        self.problems.add(self.key(name), msg)

    def str_(self, name: str, default: str, *, choices: tuple[str, ...] | None = None,
             allow_empty: bool = False) -> str:
        v = self.raw(name)
        if v is _MISSING or v is None and default is not None:
            return default
        if not isinstance(v, str):
            self.bad(name, f"expected a string, got {_kind(v)}")
            return default
        if choices is not None and v not in choices:
            self.bad(name, f"unknown value {v!r}; expected one of: {', '.join(choices)}")
            return default
        if not allow_empty and not v.strip():
            self.bad(name, "must not be empty")
            return default
        return v

    def choice(self, name: str, default: _C, choices: tuple[_C, ...]) -> _C:
        """One of ``choices`` (a settings Literal's values), typed as that Literal."""
        return cast(_C, self.str_(name, default, choices=choices))

    def opt_str(self, name: str) -> str | None:
        v = self.raw(name)
        if v is _MISSING or v is None:
            return None
        if not isinstance(v, str):
            self.bad(name, f"expected a string or null, got {_kind(v)}")
            return None
        return v

    def num(self, name: str, default: float, *, lo: float, hi: float) -> float:
        v = self.raw(name)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.bad(name, f"expected a number, got {_kind(v)}")
            return default
        if not lo <= v <= hi:
            self.bad(name, f"{v} is out of range; expected {lo:g} to {hi:g}")
            return default
        return float(v)

    def bool_(self, name: str, default: bool) -> bool:
        v = self.raw(name)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            self.bad(name, f"expected true or false, got {_kind(v)}")
            return default
        return v

    def int_(self, name: str, default: int, *, lo: int, hi: int) -> int:
        v = self.raw(name)
        if v is _MISSING:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(name, f"expected a whole number, got {_kind(v)}")
            return default
        if not lo <= v <= hi:
            self.bad(name, f"{v} is out of range; expected {lo} to {hi}")
            return default
        return v

    def section(self, name: str) -> _Section:
        v = self.raw(name)
        return _Section(None if v is _MISSING else v, self.key(name), self.problems)

    def finish(self) -> None:
        for k in self.data:
            if k not in self.used:
                known = ", ".join(sorted(self.used)) or "none"
                self.problems.add(self.key(str(k)), f"unknown key (known here: {known})")


def _kind(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)



def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def _path(sec: _Section, name: str, base: Path) -> Path | None:
    v = sec.opt_str(name)
    if v is None:
        return None
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p



def _url(sec: _Section, name: str, schemes: tuple[str, ...], *, sends: str | None = None,
         template: bool = False) -> str | None:
    v = sec.opt_str(name)
    if v is None:
        return None
    why = url_problem(v, schemes, sends=sends, template=template)
    if why is not None:
        sec.bad(name, why)
        return None
    return v


def url_problem(url: str, schemes: tuple[str, ...], *, sends: str | None = None,
                template: bool = False) -> str | None:
    """Why ``url`` cannot be used, or None.

    Args:
        url: the URL (or, with ``template``, a URL template).
        schemes: the schemes allowed (the first is the plain one, e.g. ``http``).
        sends: what secret goes with the requests (then plain http:// or ws:// is
            allowed only to a loopback address), or None.
        template: ``{placeholders}`` may be in the path and query, never in the host.
    """
    if any(ord(c) <= 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        return "contains a space or a control character"
    try:
        parts = urlsplit(url)
    except ValueError as e:  # "Invalid IPv6 URL"
        return f"is not a URL ({e})"
    if "@" in parts.netloc:  # never shown: it would be a password in the journal
        return ("must not carry a user name or password: secrets never live in the "
                "config file; use a credential")
    if template and any(b in parts.scheme + parts.netloc for b in "{}"):
        return ("may have {placeholders} only in the path and the query: the model must "
                "not choose where the request goes")
    shown = guard.printable(url, 120)
    if parts.scheme not in schemes or not parts.hostname:
        return f"{shown!r} is not an {' or '.join(s + '://' for s in schemes)} URL"
    try:
        port = parts.port
    except ValueError:
        return f"{shown!r} has a port outside 1-65535"
    if port == 0:
        return f"{shown!r} has a port outside 1-65535"
    plain = schemes[0]
    if sends is not None and parts.scheme == plain and not _is_loopback(parts.hostname):
        return (f"plain {plain}:// would send {sends} unencrypted to {parts.hostname}; "
                f"use {plain}s:// (plain {plain}:// is allowed only to a loopback address)")
    return None
