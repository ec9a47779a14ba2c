"""From a file to :class:`Settings`.

The bounded YAML loader, and :func:`parse`, which runs one validator per section.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from voiced import guard
from voiced.config.audio import _audio
from voiced.config.hands_free import _earcons, _wake_word
from voiced.config.hardware import _button, _leds
from voiced.config.realtime import _realtime
from voiced.config.sections import _path, _Problems, _Section
from voiced.config.settings import (
    CONTROL_SOCKET_ENV,
    LOG_LEVELS,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_VALUES,
    ControlSettings,
    Settings,
)
from voiced.config.tools import _tools
from voiced.config.transcripts import _transcripts
from voiced.errors import ConfigError


def parse(data: object, *, environ: Mapping[str, str] | None = None,
          base_dir: Path | None = None, source_path: Path | None = None,
          require_secrets: bool = True) -> Settings:
    """Validate a parsed YAML document into :class:`Settings`.

    Args:
        data: what ``yaml.safe_load`` returned.
        environ: where secrets and defaults come from (default ``os.environ``).
        base_dir: relative paths are resolved against it (default: the cwd).
        source_path: recorded in the result, for reloads.
        require_secrets: False lets missing credentials pass (``voiced ctl`` only needs
            ``control.socket``, and its user may not be able to read the secrets).

    Raises:
        ConfigError: with every problem found, each named by its dotted key.
    """
    env = os.environ if environ is None else environ
    base = base_dir or Path.cwd()
    shape = _shape_problems(data)
    if shape:  # nothing below may walk, print or compare a tree like that
        raise ConfigError(shape)
    problems = _Problems()
    top = _Section(data, "", problems)
    device_id = top.str_("device_id", socket.gethostname() or "voiced")
    if len(device_id) > 64 or any(c.isspace() for c in device_id):
        top.bad("device_id", "must be at most 64 characters with no spaces")
    log_level = top.choice("log_level", "info", LOG_LEVELS)
    realtime = _realtime(top.section("realtime"), env)
    audio = _audio(top.section("audio"), base)
    button = _button(top)
    leds = _leds(top.section("leds"))
    transcripts = _transcripts(top.section("transcripts"), base, env)
    tools = _tools(top.section("tools"), base, env)
    wake_word = _wake_word(top.section("wake_word"))
    earcons = _earcons(top.section("earcons"))
    ctl = top.section("control")
    dc = ControlSettings()
    sock = _path(ctl, "socket", base) or dc.socket
    if env.get(CONTROL_SOCKET_ENV):
        sock = Path(env[CONTROL_SOCKET_ENV]).expanduser().absolute()
    why = socket_path_problem(sock)
    if why is not None:
        problems.add("control.socket", why)
    control = ControlSettings(socket=sock, max_connections=ctl.int_(
        "max_connections", dc.max_connections, lo=1, hi=256))
    ctl.finish()
    top.finish()
    if not require_secrets:
        problems.items = [(k, m) for k, m in problems.items if not k.startswith("credentials.")]
    if problems.items:
        raise ConfigError(problems.items)
    return Settings(device_id=device_id, realtime=realtime, audio=audio, button=button,
                    leds=leds, transcripts=transcripts, control=control, tools=tools,
                    wake_word=wake_word, earcons=earcons,
                    log_level=log_level, source_path=source_path,
                    warnings=tuple(problems.warnings))


def socket_path_problem(path: Path) -> str | None:
    """Why the control socket cannot be made at ``path``, or None.

    Something other than a socket there (a file, a directory) is never replaced: the
    daemon replaces only a socket a crashed daemon left.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # the bind will say what is wrong
    if stat.S_ISSOCK(st.st_mode):
        return None
    kind = "a directory" if stat.S_ISDIR(st.st_mode) else (
        "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file")
    return (f"{path} is {kind}, not a socket; the daemon replaces only a stale socket: "
            "point control.socket at a path of its own")


def load(path: str | Path, *, environ: Mapping[str, str] | None = None,
         require_secrets: bool = True) -> Settings:
    """Read and validate the YAML file at ``path``.

    Relative paths inside the file are resolved against the file's directory.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or invalid.
    """
    p = Path(path)
    return parse(read_yaml(p), environ=environ, base_dir=p.resolve().parent, source_path=p,
                 require_secrets=require_secrets)


def read_yaml(p: Path) -> object:
    """The YAML document in ``p``: bounded in size, nesting and alias expansion.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML (key ``config``).
    """
    text = _read_config(p)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader, bounded
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = guard.printable(getattr(e, "problem", None) or "invalid YAML", 200)
        raise ConfigError([("config", f"{p} is not valid YAML{where}: {problem}")]) from None
    except (ValueError, RecursionError, MemoryError) as e:  # the last line of defence
        raise ConfigError([("config", f"{p} cannot be loaded: {type(e).__name__}")]) from None
    if data is None:  # an empty (or truncated) file would otherwise pass as all defaults
        raise ConfigError([("config", f"{p} is empty")])
    return data


def _read_config(p: Path) -> str:
    """The text of the config file, at most :data:`MAX_CONFIG_BYTES`, from a regular file."""
    try:
        data, _ = guard.read_small_file(p, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError([("config", f"{p} does not exist")]) from None
    except guard.FileRefused as e:
        raise ConfigError([("config", f"{p} {e}")]) from None
    except OSError as e:
        raise ConfigError([("config", f"{p} cannot be read: {e.strerror or e}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([("config", f"{p} is not UTF-8 text (byte {e.start})")]) from None


class _TooLong:
    """An integer literal with too many digits to be a setting.

    Python refuses to convert more than 4,300 (a ValueError out of the YAML loader).
    """

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number with {self.digits} digits>"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounds: nesting depth, and no huge integer literals.

    The composer recurses once per level, so 20,000 brackets were a RecursionError; an
    alias bomb loads as a small graph of shared objects and is caught by
    :func:`_shape_problems` before anything walks it.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> object:  # type: ignore[override]
        text = str(self.construct_scalar(node))
        digits = sum(c.isalnum() for c in text)
        if digits > MAX_DIGITS:
            return _TooLong(digits)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


_NOT_TEXT: Final = re.compile("[\x00\ud800-\udfff]")


def _children(node: object) -> list[object]:
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return node
    return []


def _shape_problems(data: object) -> list[tuple[str, str]]:
    """Problems with the document's shape, before any key is read.

    - more than :data:`MAX_VALUES` values once YAML aliases are expanded, or a value
      that contains itself (an anchor used inside itself): named by the key where the
      expansion happens, found without expanding anything;
    - mapping keys that are not strings (``on:`` is a YAML boolean);
    - integer literals too long to be a setting.
    """
    sizes = _expanded_sizes(data)
    if sizes.get(id(data), 1) > MAX_VALUES:
        return _explosions(data, sizes)
    out: list[tuple[str, str]] = []
    stack: list[tuple[object, str]] = [(data, "")]
    while stack and len(out) < 20:
        node, path = stack.pop()
        if isinstance(node, str) and _NOT_TEXT.search(node):
            out.append((path or "config", "contains a NUL character or half of a UTF-16 "
                        "surrogate pair (a \\u escape), which is not text"))
        elif isinstance(node, _TooLong):
            out.append((path or "config", f"a number with {node.digits} digits is too long"))
        elif isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, bool):
                    out.append((path or "config", f"a key reads as the boolean "
                                f"{str(k).lower()}: YAML reads on, off, yes, no, true and "
                                "false unquoted as booleans; quote the key (\"on\":)"))
                    continue
                if not isinstance(k, str) or _NOT_TEXT.search(k):
                    out.append((path or "config", f"key {guard.printable(k, 40)} is not a "
                                f"string; quote it (\"{guard.printable(k, 40)}\":)"))
                    continue
                stack.append((v, f"{path}.{k}" if path else k))
        elif isinstance(node, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return out


def _expanded_sizes(data: object) -> dict[int, int]:
    """id(container) -> how many values are under it, aliases expanded.

    Capped just over :data:`MAX_VALUES`; a container that contains itself counts as over.
    Linear in the distinct containers: nothing is expanded.
    """
    over = MAX_VALUES + 1
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[object, bool]] = [(data, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            total = 1 + sum(sizes.get(id(c), over if id(c) in open_ else 1)
                            for c in _children(node))
            sizes[key] = min(total, over)
            open_.discard(key)
            continue
        if key in sizes:
            continue
        if key in open_:  # reached again from inside itself
            continue
        open_.add(key)
        stack.append((node, True))
        stack += [(c, False) for c in _children(node)
                  if isinstance(c, dict | list) and id(c) not in sizes]
    return sizes


def _explosions(data: object, sizes: dict[int, int]) -> list[tuple[str, str]]:
    """Where an over-large tree explodes, as dotted keys.

    Mapping keys are followed down to the list (or self-containing value) where several
    huge branches meet.
    """
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    stack: list[tuple[object, str]] = [(data, "")]
    while stack and len(out) < 5:
        node, path = stack.pop()
        seen.add(id(node))
        if isinstance(node, dict):
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        else:
            items = [(f"{path}[{i}]", v) for i, v in enumerate(_children(node))]
        heavy = [(p, v) for p, v in items if sizes.get(id(v), 1) > MAX_VALUES]
        if any(id(v) in seen for _, v in heavy) or not heavy or (
                not isinstance(node, dict) and len(heavy) > 1):
            out.append((path or "config", f"expands to more than {MAX_VALUES:,} values or "
                        "contains itself (YAML aliases)"))
            continue
        stack += [(v, p) for p, v in reversed(heavy) if id(v) not in seen]
    return out
