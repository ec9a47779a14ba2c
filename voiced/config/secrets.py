"""Credentials: :class:`Secret`, and reading them.

From ``$CREDENTIALS_DIRECTORY``, the installed directory or the environment.
"""

from __future__ import annotations

import stat
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from voiced import guard
from voiced.config.sections import _Section
from voiced.errors import ConfigError

# where systemd/install.sh puts the secrets the unit passes with LoadCredential=
INSTALLED_CREDENTIALS_DIR: Final = Path("/etc/voiced/credentials")
# credential name -> environment variable (contract §2)
CREDENTIAL_ENV: Final = {
    "openai_api_key": "OPENAI_API_KEY",
    "webhook_token": "VOICED_WEBHOOK_TOKEN",
    "supabase_key": "VOICED_SUPABASE_KEY",
    "postgres_dsn": "VOICED_POSTGRES_DSN",
}

MAX_CREDENTIAL_BYTES: Final = 65_536
# systemd's LoadCredential=ID:/a/directory names each file's credential ID_<file name>
CREDENTIAL_PREFIX: Final = "voiced_"


class Secret:
    """A credential value that never reveals itself in repr/str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        guard.register_secret(value)  # no log line can show it, whatever carries it

    def reveal(self) -> str:
        """Return the secret; call only where it is put on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_credential(name: str, environ: Mapping[str, str]) -> Secret | None:
    """Read credential ``name`` from ``$CREDENTIALS_DIRECTORY``, then the environment.

    Returns None when neither has it. Whitespace around the value (the newline of
    ``echo key > file``) is stripped.

    Raises:
        ConfigError: the credential is there but unusable (not one header-safe line, not
            a readable regular file, not UTF-8); the message never shows the value.
    """
    found = _find_credential(name, environ)
    return Secret(found.value) if found else None


def credential_source(name: str, environ: Mapping[str, str]) -> str | None:
    """Where :func:`read_credential` finds ``name`` (a file or ``$VAR``), for messages."""
    found = _find_credential(name, environ)
    return found.source if found else None


@dataclass(frozen=True, slots=True)
class _Found:
    value: str
    source: str
    warnings: tuple[str, ...] = ()


def _find_credential(name: str, environ: Mapping[str, str]) -> _Found | None:
    """Credential ``name``'s value and where it came from, or None.

    Looked for in ``$CREDENTIALS_DIRECTORY/<name>``, then ``.../voiced_<name>`` (how
    systemd names the files of a ``LoadCredential=voiced:<directory>``), then the
    environment. An empty file counts as absent (install.sh creates them empty).

    Raises:
        ConfigError: naming ``credentials.<name>``, for a credential that is there but
            cannot be used.
    """
    key = f"credentials.{name}"
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        for file_name in (name, CREDENTIAL_PREFIX + name):
            path = Path(cred_dir) / file_name
            try:
                found = _read_credential_file(path)
            except _Unusable as e:
                raise ConfigError([(key, f"{path} {e}")]) from None
            if found is not None and found.value:
                _check_credential(key, found.value, found.source, header=name != "postgres_dsn")
                return found
    env = credential_env(name)
    value = environ.get(env, "").strip()
    if not value:
        return None
    _check_credential(key, value, f"${env}", header=name != "postgres_dsn")
    return _Found(value, f"${env}")


class _Unusable(Exception):
    """A credential file that is there but cannot be read (the message says why)."""


def _read_credential_file(path: Path) -> _Found | None:
    """The stripped text of a credential file, None when there is none.

    Opened without blocking (a FIFO would hang ``check-config`` and the daemon), read up
    to :data:`MAX_CREDENTIAL_BYTES`, and only when it is a regular file.
    """
    warnings: list[str] = []
    if path.is_symlink():
        warnings.append(
            f"{path} is a symbolic link: systemd's LoadCredential= of a directory "
            "skips symbolic links, so the service would not see it; copy the file")
    try:
        data, st = guard.read_small_file(path, MAX_CREDENTIAL_BYTES)
    except FileNotFoundError:
        return None
    except guard.FileRefused as e:
        raise _Unusable(str(e)) from None
    except OSError as e:
        raise _Unusable(f"cannot be read: {e.strerror or type(e).__name__}") from None
    if st.st_mode & 0o077:
        warnings.append(f"{path} is open to other users (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unusable("is not UTF-8 text") from None
    return _Found(text.strip(), str(path), tuple(warnings))


def credential_problem(value: str, *, header: bool = True) -> str | None:
    """Why ``value`` cannot be a credential, or None; never quotes the value.

    A credential is one line of printable text: no control characters, no invisible
    format characters (a zero-width space pasted from a web page), and for a value sent
    in an HTTP header (``header``) nothing outside Latin-1, which a header cannot carry.
    """
    if "\n" in value or "\r" in value:
        return ("has more than one line; a credential is one line (a file may end with "
                "one newline)")
    for i, c in enumerate(value, 1):
        o = ord(c)
        if 0xD800 <= o <= 0xDFFF:
            return "is not UTF-8 text"
        if o < 0x20 or 0x7F <= o <= 0x9F:
            return f"contains the control character U+{o:04X} (character {i})"
        if unicodedata.category(c) in ("Cf", "Zl", "Zp", "Co", "Cn"):
            return (f"contains the invisible character U+{o:04X} "
                    f"{unicodedata.name(c, '')} (character {i}): copied from a web page "
                    "or a document? Enter it again")
        if header and o > 0xFF:
            return (f"contains U+{o:04X} (character {i}), which an HTTP header cannot "
                    "carry")
    return None


def _check_credential(key: str, value: str, source: str, *, header: bool) -> None:
    why = credential_problem(value, header=header)
    if why is not None:
        raise ConfigError([(key, f"{source} {why}")])


def _credential(sec: _Section, name: str, environ: Mapping[str, str]) -> Secret | None:
    """:func:`read_credential` inside a parse: problems and warnings are recorded."""
    try:
        found = _find_credential(name, environ)
    except ConfigError as e:
        for k, m in e.problems:
            sec.problems.add(k, m)
        return None
    if found is None:
        return None
    for w in found.warnings:
        sec.problems.warn(f"credentials.{name}", w)
    return Secret(found.value)


def credential_env(name: str) -> str:
    """The environment variable credential ``name`` may come from (contract §2)."""
    return CREDENTIAL_ENV.get(name, f"VOICED_{name.upper()}")


def _missing_credential(name: str) -> str:
    """The error for a credential found in neither place, saying where to put it."""
    return f"missing: put it in $CREDENTIALS_DIRECTORY/{name} or ${credential_env(name)}"
