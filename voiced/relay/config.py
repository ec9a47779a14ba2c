"""relay.yaml into frozen, typed settings: the same strict validation as the device's.

Unknown keys are errors, every problem is reported at once (``ConfigError``, exit 78),
and secrets come from ``$CREDENTIALS_DIRECTORY/<name>`` then the environment: the
upstream key (``openai_api_key``) and the database (``postgres_dsn``). The helpers are
the device config's own (``voiced.config``), imported rather than copied.

Agents are validated here too, both from the YAML and when read back from the
database (a row someone edited by hand is outside data like any other).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from voiced.config import (
    EAGERNESS,
    LOG_LEVELS,
    TOOL_NAME_RE,
    VOICES,
    Secret,
    read_credential,
    read_yaml,
)
from voiced.config.realtime import _ws_url
from voiced.config.secrets import _missing_credential
from voiced.config.sections import _MISSING, _is_loopback, _kind, _path, _Problems, _Section
from voiced.errors import ConfigError

DEFAULT_RELAY_CONFIG: Final = "/etc/voiced/relay.yaml"
RELAY_CONFIG_ENV: Final = "VOICED_RELAY_CONFIG"
# where the relay's secrets live when systemd gives no $CREDENTIALS_DIRECTORY; not the
# device's directory: on a Pi running both, the device's openai_api_key is a relay token
INSTALLED_RELAY_CREDENTIALS_DIR: Final = Path("/etc/voiced/relay-credentials")

AGENT_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
DEVICE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PATH_RE: Final = re.compile(r"^/[A-Za-z0-9_./-]{0,200}$")
RELAY_TURN_TYPES: Final = ("server_vad", "semantic_vad", "none")

DEVICE_MAY_SET: Final = ("voice", "turn_detection", "tools")
"""What an agent may let a device change in its own session.update (the allow-list)."""


@dataclass(frozen=True, slots=True)
class Agent:
    """What ``agent_id`` selects: the session the relay configures upstream."""

    id: str
    """Matches ``?agent_id=``; also ``conversations.agent_id``."""
    instructions: str
    voice: str
    """Default voice (``?voice=`` may pick another from ``voices``)."""
    voices: tuple[str, ...]
    """Voices a device may choose; always includes ``voice``."""
    model: str
    """Realtime model, sent upstream as ``?model=``."""
    transcription: dict[str, Any]
    """GA ``audio.input.transcription`` (model, language, prompt)."""
    turn_detection: dict[str, Any] | None
    """GA ``audio.input.turn_detection``; None: the client ends turns."""
    tools: tuple[dict[str, Any], ...] = ()
    """Function tools declared to the model; devices run the calls."""
    device_may_set: tuple[str, ...] = ("voice", "turn_detection")
    """Parts of a device's own session.update that are applied (the rest is ignored)."""

    def row(self) -> dict[str, Any]:
        """The agent as the ``agents`` table stores it (and :func:`agent_from_row` reads)."""
        return {"id": self.id, "instructions": self.instructions, "voice": self.voice,
                "voices": list(self.voices), "model": self.model,
                "transcription": self.transcription, "turn_detection": self.turn_detection,
                "tools": list(self.tools), "device_may_set": list(self.device_may_set)}


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Where devices connect."""

    host: str = "127.0.0.1"
    port: int = 8780
    path: str = "/v1/realtime"
    """The URL path devices use: ws(s)://HOST:PORT<path>?agent_id=&voice=&conversation_id=."""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Peers whose X-Forwarded-For names the client address (for per-address limits)."""
    allowed_origins: tuple[str, ...] | None = None
    """Browser Origin values accepted (None: any); devices send no Origin."""
    max_connections: int = 1000
    handshake_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """The Realtime API the relay talks to with its own key."""

    url: str = "wss://api.openai.com/v1/realtime"
    api_key: Secret | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    keepalive_s: float = 20.0


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """PostgreSQL: devices, agents, conversations and their messages."""

    dsn: Secret | None = field(default=None, repr=False)
    pool_size: int = 10
    timeout_s: float = 5.0
    write_timeout_s: float = 2.0
    """A transcript write slower than this goes to the spool instead (audio waits behind it)."""


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """Where transcripts wait, durably, while the database is unreachable."""

    dir: Path = Path("/var/lib/voiced-relay/spool")
    max_records: int = 100_000
    max_bytes: int = 500_000_000
    retry_max_s: float = 60.0


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Bounds per connection and rate limits per device and per address."""

    max_frame_bytes: int = 262_144
    frames_per_s: float = 200.0
    frames_burst: int = 400
    bad_frames_burst: int = 20
    """Refused device frames tolerated (refilled at one a second) before the close."""
    device_connects_per_min: float = 30.0
    device_connect_burst: int = 10
    address_connects_per_min: float = 120.0
    address_connect_burst: int = 60
    api_requests_per_min: float = 120.0
    """The browser client's JSON requests per client address (each looks a token up)."""
    api_request_burst: int = 30


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The browser client the relay serves on its own port (``voiced/relay/web/``)."""

    path: str | None = "/app/"
    """Where the page is (a path ending in /); None: no page, no JSON endpoints."""
    agent_id: str | None = None
    """The page's agent unless its URL names one (``?agent_id=``); default: the first
    agent of this file."""


@dataclass(frozen=True, slots=True)
class AudioSettings:
    """What devices' audio may travel as (issue 24)."""

    opus: bool = True
    """Take a device's Opus offer (``Voiced-Audio``); false answers ``pcm16`` to every
    offer, so devices send base64 PCM16 as without Opus (``voiced/relay/codec.py``)."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything `voiced relay` needs, validated."""

    server: ServerSettings
    upstream: UpstreamSettings
    database: DatabaseSettings
    spool: SpoolSettings
    limits: LimitSettings
    agents: tuple[Agent, ...] = ()
    web: WebSettings = WebSettings()
    audio: AudioSettings = AudioSettings()
    log_level: str = "info"
    source_path: Path | None = None


# ------------------------------------------------------------------------ agents


def _turn_detection(sec: _Section) -> dict[str, Any] | None:
    kind = sec.str_("type", "server_vad", choices=RELAY_TURN_TYPES)
    threshold = sec.num("threshold", 0.5, lo=0.0, hi=1.0)
    prefix = sec.int_("prefix_padding_ms", 300, lo=0, hi=5000)
    silence = sec.int_("silence_duration_ms", 500, lo=100, hi=10000)
    eagerness = sec.str_("eagerness", "auto", choices=EAGERNESS)
    flags: dict[str, bool] = {}
    for flag in ("create_response", "interrupt_response"):
        v = sec.raw(flag)
        if v is not _MISSING and not isinstance(v, bool):
            sec.bad(flag, f"expected true or false, got {_kind(v)}")
        flags[flag] = v if isinstance(v, bool) else True
    sec.finish()
    if kind == "none":
        return None
    out: dict[str, Any]
    if kind == "server_vad":
        out = {"type": "server_vad", "threshold": threshold, "prefix_padding_ms": prefix,
               "silence_duration_ms": silence}
    else:
        out = {"type": "semantic_vad", "eagerness": eagerness}
    return out | flags


def _tools(sec: _Section, name: str) -> tuple[dict[str, Any], ...]:
    raw = sec.raw(name)
    if raw is _MISSING or raw is None:
        return ()
    if not isinstance(raw, list):
        sec.bad(name, f"expected a list of tools, got {_kind(raw)}")
        return ()
    tools: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        t = _Section(entry, sec.key(f"{name}[{i}]"), sec.problems)
        tname = t.str_("name", "")
        if not TOOL_NAME_RE.match(tname):
            t.bad("name", f"{tname!r} must be 1-64 letters, digits, _ or -")
        elif tname in seen:
            t.bad("name", f"{tname!r} is declared twice")
        seen.add(tname)
        description = t.str_("description", "")
        params = t.raw("parameters")
        if params is _MISSING or params is None:
            params = {"type": "object", "properties": {}}
        ok = isinstance(params, dict) and params.get("type") == "object"
        if not ok or not isinstance(params, dict):
            t.bad("parameters", "must be a JSON schema of type object")
        else:
            import fastjsonschema

            try:
                fastjsonschema.compile(params)
            except fastjsonschema.JsonSchemaDefinitionException as e:
                ok = False
                t.bad("parameters", f"is not a valid JSON schema: {e}")
        t.raw("type")  # "function", optional: rows read back from the database carry it
        if t.data.get("type", "function") != "function":
            t.bad("type", "only function tools are supported")
        t.finish()
        if ok and TOOL_NAME_RE.match(tname):
            tools.append({"type": "function", "name": tname, "description": description,
                          "parameters": params})
    return tuple(tools)


def parse_agent(data: object, key: str, problems: _Problems) -> Agent | None:
    """One agent (a YAML list entry or an ``agents`` row), or None with problems added."""
    before = len(problems.items)
    sec = _Section(data, key, problems)
    agent_id = sec.str_("id", "")
    if not AGENT_ID_RE.match(agent_id):
        sec.bad("id", f"{agent_id!r} must be 1-128 letters, digits, _ . : or -")
    instructions = sec.str_("instructions", "You are a helpful voice assistant.",
                            allow_empty=True)
    voice = sec.str_("voice", "marin", choices=VOICES)
    voices: list[str] = [voice]
    raw_voices = sec.raw("voices")
    if raw_voices is not _MISSING and raw_voices is not None:
        if not isinstance(raw_voices, list):
            sec.bad("voices", f"expected a list of voices, got {_kind(raw_voices)}")
        else:
            for v in raw_voices:
                if v not in VOICES:
                    sec.bad("voices", f"unknown voice {v!r}; expected some of: "
                                      f"{', '.join(VOICES)}")
                elif v not in voices:
                    voices.append(v)
    model = sec.str_("model", "gpt-realtime-2.1")
    if "preview" in model:
        sec.bad("model", f"{model!r} is a retired beta-era model; use e.g. gpt-realtime-2.1")
    tr = sec.section("transcription")
    transcription: dict[str, Any] = {"model": tr.str_("model", "gpt-4o-mini-transcribe")}
    language = tr.opt_str("language")
    if language is not None:
        if len(language) != 2 or not language.isalpha() or not language.islower():
            tr.bad("language", f"{language!r} is not an ISO-639-1 code such as en, de, ja")
        else:
            transcription["language"] = language
    prompt = tr.opt_str("prompt")
    if prompt:
        transcription["prompt"] = prompt
    tr.finish()
    raw_td = sec.raw("turn_detection")
    td = _turn_detection(_Section(None if raw_td is _MISSING else raw_td,
                                  sec.key("turn_detection"), problems))
    tools = _tools(sec, "tools")
    may: list[str] = []
    raw_may = sec.raw("device_may_set")
    if raw_may is _MISSING:
        may = ["voice", "turn_detection"]
    elif raw_may is not None:
        if not isinstance(raw_may, list):
            sec.bad("device_may_set", f"expected a list, got {_kind(raw_may)}")
        for m in raw_may if isinstance(raw_may, list) else []:
            if m not in DEVICE_MAY_SET:
                sec.bad("device_may_set", f"unknown value {m!r}; expected some of: "
                                          f"{', '.join(DEVICE_MAY_SET)}")
            elif m not in may:
                may.append(m)
    sec.finish()
    if len(problems.items) > before:
        return None
    return Agent(id=agent_id, instructions=instructions, voice=voice, voices=tuple(voices),
                 model=model, transcription=transcription, turn_detection=td, tools=tools,
                 device_may_set=tuple(may))


def agent_from_row(row: Mapping[str, Any]) -> Agent:
    """An ``agents`` row, validated like the YAML.

    Raises:
        ConfigError: the row is not a valid agent (named ``agents[<id>]``).
    """
    problems = _Problems()
    data = dict(row)
    if data.get("turn_detection") is None:
        data["turn_detection"] = {"type": "none"}
    agent = parse_agent(data, f"agents[{data.get('id')!s:.64}]", problems)
    if agent is None:
        raise ConfigError(problems.items)
    return agent


# ------------------------------------------------------------------------ the file


def _server(sec: _Section, base: Path) -> ServerSettings:
    d = ServerSettings()
    path = sec.str_("path", d.path)
    if not PATH_RE.match(path):
        sec.bad("path", f"{path!r} is not a URL path such as /v1/realtime")
    tls = sec.section("tls")
    cert, key = _path(tls, "cert_file", base), _path(tls, "key_file", base)
    if (cert is None) != (key is None):
        tls.bad("cert_file" if cert is None else "key_file",
                "cert_file and key_file go together (or neither: TLS by a reverse proxy)")
    for name, p in (("cert_file", cert), ("key_file", key)):
        if p is not None and not p.is_file():
            tls.bad(name, f"{p} does not exist")
    tls.finish()
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    raw = sec.raw("trusted_proxies")
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list):
            sec.bad("trusted_proxies", f"expected a list of addresses or CIDRs, got {_kind(raw)}")
        for p in raw if isinstance(raw, list) else []:
            try:
                proxies.append(ipaddress.ip_network(str(p), strict=False))
            except ValueError:
                sec.bad("trusted_proxies", f"{p!r} is not an address or CIDR")
    origins: tuple[str, ...] | None = None
    raw = sec.raw("allowed_origins")
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
            sec.bad("allowed_origins", "expected a list of origins such as https://example.org")
        else:
            origins = tuple(raw)
    s = ServerSettings(
        host=sec.str_("host", d.host), port=sec.int_("port", d.port, lo=0, hi=65535),
        path=path, tls_cert_file=cert, tls_key_file=key, trusted_proxies=tuple(proxies),
        allowed_origins=origins,
        max_connections=sec.int_("max_connections", d.max_connections, lo=1, hi=100_000),
        handshake_timeout_s=sec.num("handshake_timeout_s", d.handshake_timeout_s, lo=1, hi=120))
    sec.finish()
    return s


def _upstream(sec: _Section, environ: Mapping[str, str]) -> UpstreamSettings:
    d = UpstreamSettings()
    url, parts = _ws_url(sec, d.url)
    key = read_credential("openai_api_key", environ)
    if key is None and parts is not None and parts.hostname and not _is_loopback(parts.hostname):
        sec.problems.add("credentials.openai_api_key",
                         f"{_missing_credential('openai_api_key')} (needed for "
                         f"{parts.hostname})")
    s = UpstreamSettings(
        url=url, api_key=key,
        connect_timeout_s=sec.num("connect_timeout_s", d.connect_timeout_s, lo=1, hi=120),
        keepalive_s=sec.num("keepalive_s", d.keepalive_s, lo=0.1, hi=120))
    sec.finish()
    return s


def _database(sec: _Section, environ: Mapping[str, str]) -> DatabaseSettings:
    d = DatabaseSettings()
    dsn = read_credential("postgres_dsn", environ)
    if dsn is None:
        sec.problems.add("credentials.postgres_dsn", _missing_credential("postgres_dsn"))
    s = DatabaseSettings(
        dsn=dsn, pool_size=sec.int_("pool_size", d.pool_size, lo=1, hi=200),
        timeout_s=sec.num("timeout_s", d.timeout_s, lo=0.5, hi=120),
        write_timeout_s=sec.num("write_timeout_s", d.write_timeout_s, lo=0.1, hi=60))
    sec.finish()
    return s


def _spool(sec: _Section, base: Path) -> SpoolSettings:
    d = SpoolSettings()
    s = SpoolSettings(
        dir=_path(sec, "dir", base) or d.dir,
        max_records=sec.int_("max_records", d.max_records, lo=1, hi=100_000_000),
        max_bytes=sec.int_("max_bytes", d.max_bytes, lo=10_000, hi=1_000_000_000_000),
        retry_max_s=sec.num("retry_max_s", d.retry_max_s, lo=1, hi=3600))
    sec.finish()
    return s


def _limits(sec: _Section) -> LimitSettings:
    d = LimitSettings()
    s = LimitSettings(
        max_frame_bytes=sec.int_("max_frame_bytes", d.max_frame_bytes, lo=4096,
                                 hi=16 * 1024 * 1024),
        frames_per_s=sec.num("frames_per_s", d.frames_per_s, lo=1, hi=100_000),
        frames_burst=sec.int_("frames_burst", d.frames_burst, lo=1, hi=1_000_000),
        bad_frames_burst=sec.int_("bad_frames_burst", d.bad_frames_burst, lo=1, hi=100_000),
        device_connects_per_min=sec.num("device_connects_per_min",
                                        d.device_connects_per_min, lo=0.1, hi=1_000_000),
        device_connect_burst=sec.int_("device_connect_burst", d.device_connect_burst,
                                      lo=1, hi=1_000_000),
        address_connects_per_min=sec.num("address_connects_per_min",
                                         d.address_connects_per_min, lo=0.1, hi=1_000_000),
        address_connect_burst=sec.int_("address_connect_burst", d.address_connect_burst,
                                       lo=1, hi=1_000_000),
        api_requests_per_min=sec.num("api_requests_per_min", d.api_requests_per_min,
                                     lo=0.1, hi=1_000_000),
        api_request_burst=sec.int_("api_request_burst", d.api_request_burst, lo=1,
                                   hi=1_000_000))
    sec.finish()
    return s


def _web(sec: _Section, server: ServerSettings, agents: list[Agent]) -> WebSettings:
    d = WebSettings()
    path: str | None = d.path
    raw = sec.raw("path")
    if raw is None:
        path = None
    elif raw is not _MISSING:
        if not isinstance(raw, str) or not PATH_RE.match(raw) or not raw.endswith("/") \
                or "//" in raw or "/./" in raw or "/../" in raw:
            sec.bad("path", f"{str(raw)[:80]!r} is not a URL path ending in / such as /app/ "
                            "(or null: no page)")
        elif raw == server.path:
            sec.bad("path", f"{raw!r} is the relay's own path (server.path)")
        else:
            path = raw
    agent_id = sec.opt_str("agent_id")
    if agent_id is not None and not AGENT_ID_RE.match(agent_id):
        sec.bad("agent_id", f"{agent_id[:80]!r} must be 1-128 letters, digits, _ . : or -")
    sec.finish()
    if agent_id is None and agents:
        agent_id = agents[0].id
    return WebSettings(path=path, agent_id=agent_id)


def _audio(sec: _Section) -> AudioSettings:
    d = AudioSettings()
    opus = sec.raw("opus")
    if opus is _MISSING:
        opus = d.opus
    elif not isinstance(opus, bool):  # strictly: "no" or 0 is a mistake, not a switch
        sec.bad("opus", f"expected true or false, got {_kind(opus)}")
        opus = d.opus
    sec.finish()
    return AudioSettings(opus=opus)


def parse(data: object, *, environ: Mapping[str, str], base_dir: Path | None = None,
          source_path: Path | None = None, require_secrets: bool = True) -> RelaySettings:
    """Validate a parsed relay.yaml into :class:`RelaySettings`.

    Args:
        data: what ``yaml.safe_load`` returned.
        environ: where credentials come from (``$CREDENTIALS_DIRECTORY``, variables).
        base_dir: relative paths are resolved against it (default: the cwd).
        source_path: recorded in the result.
        require_secrets: False lets a missing upstream key pass (``add-device`` and
            ``revoke-device`` need only the database).

    Raises:
        ConfigError: with every problem found, each named by its dotted key.
    """
    base = base_dir or Path.cwd()
    problems = _Problems()
    top = _Section(data, "", problems)
    log_level = top.str_("log_level", "info", choices=LOG_LEVELS)
    server = _server(top.section("server"), base)
    upstream = _upstream(top.section("upstream"), environ)
    database = _database(top.section("database"), environ)
    spool = _spool(top.section("spool"), base)
    limits = _limits(top.section("limits"))
    agents: list[Agent] = []
    raw = top.raw("agents")
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list):
            top.bad("agents", f"expected a list of agents, got {_kind(raw)}")
        else:
            ids: set[str] = set()
            for i, entry in enumerate(raw):
                agent = parse_agent(entry, f"agents[{i}]", problems)
                if agent is not None:
                    if agent.id in ids:
                        problems.add(f"agents[{i}].id", f"{agent.id!r} is declared twice")
                    ids.add(agent.id)
                    agents.append(agent)
    web = _web(top.section("web"), server, agents)
    audio = _audio(top.section("audio"))
    top.finish()
    if not require_secrets:
        problems.items = [(k, m) for k, m in problems.items if not k.startswith("credentials.")
                          or k == "credentials.postgres_dsn"]
    if problems.items:
        raise ConfigError(problems.items)
    return RelaySettings(server=server, upstream=upstream, database=database, spool=spool,
                         limits=limits, agents=tuple(agents), web=web, audio=audio,
                         log_level=log_level,
                         source_path=source_path)


def load(path: Path, *, environ: Mapping[str, str],
         require_secrets: bool = True) -> RelaySettings:
    """Read and validate relay.yaml (relative paths against its directory).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or invalid.
    """
    return parse(read_yaml(path), environ=environ, base_dir=path.resolve().parent,
                 source_path=path, require_secrets=require_secrets)
