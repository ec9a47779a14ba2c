"""YAML configuration into frozen, typed settings, with strict validation and secrets.

Every problem found is collected and reported at once (``ConfigError.problems``), each
named by its dotted key. Secrets are read from ``$CREDENTIALS_DIRECTORY/<name>`` first,
then from the environment, and are wrapped in :class:`Secret` so that they never show in
a repr, a log line or an error message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import os
import re
import socket
import stat
import string
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import SplitResult, urlsplit

import yaml

from voiced import guard
from voiced.errors import ConfigError

DEFAULT_CONFIG_PATH: Final = "/etc/voiced/voiced.yaml"
# where systemd/install.sh puts the secrets the unit passes with LoadCredential=
INSTALLED_CREDENTIALS_DIR: Final = Path("/etc/voiced/credentials")
# overrides control.socket: a developer who is not root cannot create /run/voiced
CONTROL_SOCKET_ENV: Final = "VOICED_CONTROL_SOCKET"

VOICES: Final = (
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
)
TURN_DETECTION_TYPES: Final = ("server_vad", "semantic_vad", "client_vad", "none")
HTTP_METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")
BUILTIN_TOOLS: Final = ("time", "volume", "microphone", "status")
# the functions those groups give the model (voiced/tools/builtin.py defines them; config
# does not import it, to keep fastjsonschema out of check-config): an HTTP tool may not
# take one of these names. tests/test_tools.py checks the two agree.
BUILTIN_TOOL_NAMES: Final = frozenset({"get_time", "set_volume", "mute_microphone",
                                       "end_conversation", "device_status"})
TOOL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CREDENTIAL_RE: Final = re.compile(r"\{credential:([a-z0-9_]+)\}")
EAGERNESS: Final = ("low", "medium", "high", "auto")
AUDIO_BACKENDS: Final = ("pyaudio", "file")
ECHO_POLICIES: Final = ("half_duplex", "full_duplex", "aec")
LED_DRIVERS: Final = ("none", "gpio", "apa102")
SINKS: Final = ("none", "jsonl", "webhook", "supabase", "postgres")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
BUTTON_MODES: Final = ("toggle", "push_to_talk")
PULLS: Final = ("up", "down")

# Field metadata: a SIGHUP applies this setting without a restart. Every other setting
# keeps its running value until the daemon restarts (reload_split). A section marked LIVE
# is live as a whole; an unmarked section is live where its own fields are.
LIVE: Final = MappingProxyType({"live": True})

# credential name -> environment variable (contract §2)
CREDENTIAL_ENV: Final = {
    "openai_api_key": "OPENAI_API_KEY",
    "webhook_token": "VOICED_WEBHOOK_TOKEN",
    "supabase_key": "VOICED_SUPABASE_KEY",
    "postgres_dsn": "VOICED_POSTGRES_DSN",
}


# Bounds on what the loader accepts: a config is a few kB written by a person
MAX_CONFIG_BYTES: Final = 1_000_000
MAX_DEPTH: Final = 32
"""YAML nesting; the deepest real key (a tool's JSON schema) needs far fewer."""
MAX_VALUES: Final = 100_000
"""Values in the document once YAML aliases are expanded (an alias bomb is billions)."""
MAX_DIGITS: Final = 40
MAX_CREDENTIAL_BYTES: Final = 65_536
# systemd's LoadCredential=ID:/a/directory names each file's credential ID_<file name>
CREDENTIAL_PREFIX: Final = "voiced_"
# RFC 9110 token: what a header name may be
HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


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


@dataclass(frozen=True, slots=True)
class TurnDetectionSettings:
    """How the end of the user's turn is found."""

    type: Literal["server_vad", "semantic_vad", "client_vad", "none"] = "server_vad"
    """server_vad (default), semantic_vad, client_vad (the device finds the turns and
    sends only speech), or none (push to talk: the client commits)."""
    threshold: float = 0.5
    """server_vad activation threshold, 0..1."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech."""
    silence_duration_ms: int = 500
    """Silence that ends a turn."""
    eagerness: str = "auto"
    """semantic_vad eagerness: low, medium, high, auto."""
    vad_aggressiveness: int = 2
    """client_vad: WebRTC VAD aggressiveness, 0 (lenient) to 3 (strict)."""
    min_speech_ms: int = 60
    """client_vad: speech this long starts a turn."""
    tail_ms: int = 300
    """client_vad: silence still sent after speech (at most silence_duration_ms)."""


@dataclass(frozen=True, slots=True)
class TranscriptionSettings:
    """Input-audio transcription (what becomes the user's transcript record)."""

    model: str = "gpt-4o-mini-transcribe"
    """Transcription model name, passed through."""
    language: str | None = None
    """ISO-639-1 language hint, e.g. "de"; None lets the model guess."""
    prompt: str | None = None
    """Optional prompt that guides the transcription."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """A relay (e.g. a Supabase edge function) in front of the Realtime API."""

    agent_id: str = field(metadata=LIVE)
    """Sent as ?agent_id= (a reload: from the next connection)."""
    conversation_id: str | None = None
    """Sent as ?conversation_id=; None lets the relay create one. Read once, when the
    daemon starts its first conversation."""


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    """The Realtime connection and the session it configures."""

    url: str = field(default="wss://api.openai.com/v1/realtime", metadata=LIVE)
    """OpenAI's URL, a relay's URL, or ws://127.0.0.1:8765/v1/realtime for `voiced sim`."""
    model: str = field(default="gpt-realtime-2.1", metadata=LIVE)
    """Realtime model, sent as ?model= (not with a relay)."""
    voice: str = field(default="marin", metadata=LIVE)
    """Output voice."""
    instructions: str = field(default="You are a helpful voice assistant.", metadata=LIVE)
    """System instructions for the model."""
    relay: RelaySettings | None = None
    """Relay query parameters; None talks to OpenAI directly."""
    turn_detection: TurnDetectionSettings = field(default_factory=TurnDetectionSettings,
                                                  metadata=LIVE)
    """Turn detection sent in session.update."""
    transcription: TranscriptionSettings = field(default_factory=TranscriptionSettings,
                                                  metadata=LIVE)
    """Input transcription sent in session.update."""
    connect_timeout_s: float = field(default=10.0, metadata=LIVE)
    """Handshake plus session.created must finish within this."""
    keepalive_s: float = field(default=20.0, metadata=LIVE)
    """Ping interval, and how long a pong may take: a dead peer is noticed within twice
    this."""
    reseed_turns: int = field(default=10, metadata=LIVE)
    """A new session of the same conversation (after an expiry or a dropped connection)
    is given the last this many user and assistant turns as context (0: none)."""
    rollover_margin_s: float = field(default=300.0, metadata=LIVE)
    """Move to a new session this long before the 60-minute expiry, at a quiet moment."""
    reconnect_min_s: float = field(default=0.5, metadata=LIVE)
    """First reconnect delay."""
    reconnect_max_s: float = field(default=30.0, metadata=LIVE)
    """Longest reconnect delay."""
    max_transcript_bytes: int = 65_536
    """UTF-8 bytes of one assistant or user transcript kept (partial deltas and finals;
    an hour of speech is under 64 kB): a server cannot grow memory with its words."""
    max_pending_items: int = 64
    """Assistant items held unfinished at once; beyond this the oldest is closed and
    recorded with the words it has (and drafts stay as few)."""
    api_key: Secret | None = field(default=None, repr=False, metadata=LIVE)
    """Bearer token (credential openai_api_key); None only for loopback URLs."""


@dataclass(frozen=True, slots=True)
class AudioEndpointSettings:
    """One side (input or output) of the audio path."""

    device: str | int = "default"
    """PyAudio device: name substring, index, or "default"."""
    file: Path | None = None
    """WAV path for the file backend."""
    channel: int | None = None
    """Input only: which channel of a multi-channel mic to use (None downmixes)."""
    rate_hz: int | None = None
    """pyaudio: force this device rate (None: 24 kHz if supported, else 48k, 44.1k, ...)."""


@dataclass(frozen=True, slots=True)
class AudioSettings:
    """Mic, speaker and echo policy."""

    backend: Literal["pyaudio", "file"] = "pyaudio"
    """pyaudio (real devices) or file (WAV in, WAV out at real-time pace)."""
    input: AudioEndpointSettings = field(default_factory=AudioEndpointSettings)
    """The microphone."""
    output: AudioEndpointSettings = field(default_factory=AudioEndpointSettings)
    """The speaker."""
    echo: Literal["half_duplex", "full_duplex", "aec"] = "half_duplex"
    """half_duplex: mic muted while the speaker plays (and a tail after); full_duplex: always
    open (a headset, or a mic with hardware echo cancellation); aec: always open, with
    software echo cancellation (speexdsp; back to half duplex while it is bypassed)."""
    echo_tail_ms: int = 300
    """half_duplex: how long the mic stays muted after playback ends."""
    frame_ms: int = 20
    """Size of one mic frame sent to the server."""
    input_file_starts: Literal["on_mic", "at_start"] = "on_mic"
    """file backend: the input WAV starts when the mic is switched on (a person speaking
    after the press), or as soon as the daemon starts."""
    jitter_ms: int = 80
    """pyaudio: reply audio buffered before playback starts (absorbs network jitter)."""
    period_ms: int = 20
    """pyaudio: speaker buffer size; a stop hands silence from the next period on (what
    the device has buffered, about two periods, still plays)."""
    reopen_s: float = 3.0
    """A failed (e.g. unplugged) mic or speaker is tried again after this long, ..."""
    reopen_max_s: float = 60.0
    """... then twice as long each time, up to this (a sound card appearing in /dev/snd
    is tried at once): every attempt starts PortAudio afresh, which costs CPU and, with
    some ALSA plugin packages, 12 kB of memory that is never given back."""
    max_queued_s: float = 120.0
    """Reply audio held ahead of playback at most (about 23 MB at 48 kHz stereo); a reply
    running further ahead (an endless or far-faster-than-real-time stream) is cancelled
    there, and the model told what was heard."""


@dataclass(frozen=True, slots=True)
class ButtonSettings:
    """The one physical button (gpiozero)."""

    pin: str = "17"
    """gpiozero pin name: 17, GPIO17, BOARD11."""
    pull: Literal["up", "down"] = "up"
    """up: the button connects the pin to ground."""
    bounce_time_s: float = 0.03
    """Debounce window."""
    hold_time_s: float = 1.0
    """A press this long is a long press (new conversation)."""
    mode: Literal["toggle", "push_to_talk"] = "toggle"
    """toggle: a press toggles the mic; push_to_talk: hold to talk."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """How the orb shows one state."""

    effect: Literal["off", "solid", "blink", "pulse", "chase"]
    """off, solid, blink (on/off), pulse (breathing), chase (one lit pixel going round)."""
    color: tuple[int, int, int]
    """RGB 0-255; single-colour LEDs use its brightness."""
    period_s: float = 1.0
    """One blink / pulse / turn of the chase."""


# state -> pattern; chosen so each state is told apart at a glance, also on a single LED
DEFAULT_PATTERNS: Final[dict[str, Pattern]] = {
    "starting": Pattern("pulse", (255, 255, 255), 2.0),
    "connecting": Pattern("chase", (255, 160, 0), 1.2),
    "ready": Pattern("solid", (0, 0, 40)),
    "listening": Pattern("solid", (0, 120, 255)),
    "thinking": Pattern("pulse", (120, 0, 255), 1.0),
    "speaking": Pattern("pulse", (0, 255, 80), 0.5),
    "error": Pattern("blink", (255, 0, 0), 0.25),
}
EFFECTS: Final = ("off", "solid", "blink", "pulse", "chase")
GPIO_KINDS: Final = ("led", "pwm", "rgb", "board")
COLOR_ORDERS: Final = ("rgb", "rbg", "grb", "gbr", "brg", "bgr")


@dataclass(frozen=True, slots=True)
class LedSettings:
    """The orb (LED ring)."""

    driver: Literal["none", "gpio", "apa102"] = "none"
    """none logs state changes only; gpio drives LEDs through gpiozero; apa102 a ring."""
    patterns: dict[str, Pattern] = field(default_factory=lambda: dict(DEFAULT_PATTERNS),
                                         metadata=LIVE)
    """State name -> pattern (defaults above; the YAML overrides per state)."""
    fps: int = 30
    """Animation frames per second (at most 30)."""
    kind: Literal["led", "pwm", "rgb", "board"] = "pwm"
    """gpio: one on/off LED, one PWM LED, an RGB LED (pins r, g, b), or a board of N PWM LEDs."""
    pins: tuple[str, ...] = ()
    """gpio: the LED pin(s)."""
    active_high: bool = True
    """gpio: False for LEDs wired to light when the pin is low (common-anode RGB)."""
    pixels: int = 12
    """apa102: number of LEDs in the ring."""
    brightness: int = 10
    """apa102: global brightness 0-31."""
    color_order: str = "bgr"
    """apa102: the byte order the LEDs expect (APA102: bgr)."""
    spi_bus: int = 0
    """apa102: SPI bus (/dev/spidev<bus>.<device>)."""
    spi_device: int = 0
    """apa102: SPI chip select."""
    power_pin: str | None = None
    """apa102: the board's LED power-enable pin (ReSpeaker 4-mic HAT: 5), driven high."""


@dataclass(frozen=True, slots=True)
class TranscriptSettings:
    """Where user and assistant transcripts go."""

    sink: Literal["none", "jsonl", "webhook", "supabase", "postgres"] = "none"
    """The backend."""
    outbox_dir: Path = Path("/var/lib/voiced/outbox")
    """Durable spool of records not yet accepted by the sink."""
    jsonl_path: Path | None = None
    """jsonl sink: file the records are appended to."""
    webhook_url: str | None = None
    """webhook sink: the URL records are POSTed to."""
    webhook_token: Secret | None = field(default=None, repr=False)
    """webhook sink: bearer token (credential webhook_token), optional."""
    supabase_url: str | None = None
    """supabase sink: the project URL (https://<ref>.supabase.co)."""
    supabase_key: Secret | None = field(default=None, repr=False)
    """supabase sink: apikey + bearer (credential supabase_key)."""
    postgres_dsn: Secret | None = field(default=None, repr=False)
    """postgres sink: connection string (credential postgres_dsn)."""
    timeout_s: float = 10.0
    """Network sinks: one delivery attempt may take this long."""
    max_records: int = 10_000
    """Outbox bound: more records than this drops the oldest (with a WARNING)."""
    max_bytes: int = 50_000_000
    """Outbox bound in bytes."""
    max_drafts: int = 50
    """Drafts (assistant records waiting for their playback to end) kept at most; over
    it the oldest go. A reply in progress needs one or two."""
    retry_max_s: float = 300.0
    """Longest wait between delivery attempts (jittered exponential backoff)."""


@dataclass(frozen=True, slots=True)
class HttpToolSettings:
    """A tool the model may call that is an HTTP request (declared in YAML)."""

    name: str
    """Function name the model sees (letters, digits, _ and -)."""
    description: str
    """What it does and when to use it, for the model."""
    parameters: dict[str, Any]
    """JSON schema of the arguments (an object schema); checked before any request."""
    url: str
    """http(s) URL; {param} placeholders are filled with URL-encoded arguments."""
    method: str = "GET"
    """GET, POST, PUT, PATCH or DELETE."""
    send_arguments: Literal["query", "json", "none"] = "query"
    """Where arguments not used in the URL go: query string, JSON body, or nowhere."""
    headers: tuple[tuple[str, Secret], ...] = field(default=(), repr=False)
    """Request headers; {credential:name} in a value is filled from a credential."""
    timeout_s: float = 5.0
    """The whole request, including reading the reply."""
    reply_path: str | None = None
    """Dotted path into the JSON reply to pass back (None: the whole reply)."""
    max_reply_chars: int = 2000
    """Longer replies are cut (and marked so) before they reach the model."""
    max_reply_bytes: int = 1_000_000
    """A reply body longer than this is not read: the call answers with an error."""


@dataclass(frozen=True, slots=True)
class ToolSettings:
    """Functions the model may call during a conversation."""

    builtin: tuple[str, ...] = BUILTIN_TOOLS
    """Enabled built-in tools: time, volume, microphone (mute / end the conversation),
    status (network, uptime, outbox backlog)."""
    timezone: str | None = None
    """IANA zone for the time tool, e.g. Europe/Berlin (None: the system's)."""
    volume_file: Path | None = None
    """Where the speaker volume persists (None: "volume" next to the outbox dir)."""
    http: tuple[HttpToolSettings, ...] = ()
    """HTTP tools."""
    timeout_s: float = 10.0
    """Built-in tools that take longer than this answer with an error."""
    volume_floor_percent: int = 10
    """The lowest volume the model may set (`voiced ctl volume` may go to 0): a misheard
    "quieter" must not leave a device nobody can hear, with no voice to ask it back."""


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The local control socket used by `voiced ctl`."""

    socket: Path = Path("/run/voiced/control.sock")
    """Unix socket path (mode 0660)."""
    max_connections: int = 8
    """Clients served at once; more are answered "busy" and closed at once, so a flood
    cannot use up the daemon's file descriptors."""


# --- issue 22 (hands-free): the wake_word and earcons sections -----------------------
@dataclass(frozen=True, slots=True)
class WakeWordSettings:
    """On-device wake word (extra ``voiced[wake]``): a detection opens the mic like a press."""

    enabled: bool = False
    models: tuple[str, ...] = ("okay_nabu",)
    """Built-in pymicro-wakeword models: okay_nabu, hey_jarvis, alexa, hey_mycroft."""
    threshold: float | None = None
    """Probability cutoff for every model (None: each model's own, 0.85-0.97)."""
    refractory_s: float = 2.0
    """Audio after a detection in which nothing more is detected."""


EARCON_EVENTS: Final = ("listening_started", "listening_stopped", "reconnected", "error",
                        "new_conversation")


@dataclass(frozen=True, slots=True)
class EarconSettings:
    """Short sounds for what the device just did, through the speaker."""

    enabled: bool = False
    gain: float = 0.5
    """Loudness of every earcon, 0..1 of the loudest; scaled by the speaker volume too."""
    events: tuple[tuple[str, float], ...] = tuple((e, 1.0) for e in EARCON_EVENTS)
    """(event, gain 0..1) per event; 0 switches one event's earcon off."""

    def gain_of(self, event: str) -> float:
        """The configured gain of ``event`` (0 when off)."""
        if not self.enabled:
            return 0.0
        return self.gain * dict(self.events).get(event, 0.0)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `voiced run` needs, validated."""

    device_id: str
    """Names this device in transcripts (default: the hostname)."""
    realtime: RealtimeSettings
    audio: AudioSettings
    button: ButtonSettings | None
    leds: LedSettings
    transcripts: TranscriptSettings
    control: ControlSettings
    tools: ToolSettings = field(default_factory=ToolSettings)
    wake_word: WakeWordSettings = field(default_factory=WakeWordSettings)  # issue 22
    earcons: EarconSettings = field(default_factory=EarconSettings)  # issue 22
    log_level: str = field(default="info", metadata=LIVE)
    """debug, info, warning or error."""
    source_path: Path | None = None
    """The file these settings came from."""
    warnings: tuple[tuple[str, str], ...] = ()
    """(dotted key, message): things that work but should be fixed (a credential file
    other users may read)."""


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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _ws_url(sec: _Section, default: str, *,
            sends: str = "the API key (credential openai_api_key)",
            ) -> tuple[str, SplitResult | None]:
    """``url``: ws:// or wss:// with a host (see url_problem); its parts, None if bad."""
    url = sec.str_("url", default)
    why = url_problem(url, ("ws", "wss"), sends=sends)
    if why is not None:
        sec.bad("url", why)
        return url, None
    return url, urlsplit(url)


def _realtime(sec: _Section, environ: Mapping[str, str]) -> RealtimeSettings:
    d = RealtimeSettings()
    url, parts = _ws_url(sec, d.url)
    model = sec.str_("model", d.model)
    if "preview" in model:
        sec.bad("model", f"{model!r} is a retired beta-era model; use e.g. gpt-realtime-2.1")
    voice = sec.str_("voice", d.voice, choices=VOICES)
    instructions = sec.str_("instructions", d.instructions, allow_empty=True)

    relay: RelaySettings | None = None
    if sec.has("relay") and sec.data.get("relay") is not None:
        rs = sec.section("relay")
        agent_id = rs.str_("agent_id", "")
        if not rs.has("agent_id"):
            rs.bad("agent_id", "is required when realtime.relay is set")
        relay = RelaySettings(agent_id=agent_id, conversation_id=rs.opt_str("conversation_id"))
        rs.finish()
    else:
        sec.raw("relay")

    td = sec.section("turn_detection")
    tdd = TurnDetectionSettings()
    td_type = td.str_("type", tdd.type, choices=TURN_DETECTION_TYPES)
    turn = TurnDetectionSettings(
        type=td_type,  # type: ignore[arg-type]
        threshold=td.num("threshold", tdd.threshold, lo=0.0, hi=1.0),
        prefix_padding_ms=td.int_("prefix_padding_ms", tdd.prefix_padding_ms, lo=0, hi=5000),
        silence_duration_ms=td.int_("silence_duration_ms", tdd.silence_duration_ms,
                                    lo=100, hi=10000),
        eagerness=td.str_("eagerness", tdd.eagerness, choices=EAGERNESS),
        vad_aggressiveness=td.int_("vad_aggressiveness", tdd.vad_aggressiveness, lo=0, hi=3),
        min_speech_ms=td.int_("min_speech_ms", tdd.min_speech_ms, lo=10, hi=1000),
        tail_ms=td.int_("tail_ms", tdd.tail_ms, lo=0, hi=10000),
    )
    if td_type == "client_vad":
        if turn.tail_ms > turn.silence_duration_ms:
            td.bad("tail_ms", f"{turn.tail_ms} is longer than silence_duration_ms "
                              f"({turn.silence_duration_ms})")
        if importlib.util.find_spec("webrtcvad") is None:
            td.bad("type", "client_vad needs the webrtcvad module: "
                           "pip install 'voiced[vad]' (webrtcvad-wheels)")
    td.finish()

    tr = sec.section("transcription")
    trd = TranscriptionSettings()
    language = tr.opt_str("language")
    if language is not None and (len(language) != 2 or not language.isalpha()
                                 or not language.islower()):
        tr.bad("language", f"{language!r} is not an ISO-639-1 code such as en, de, ja")
        language = None
    transcription = TranscriptionSettings(
        model=tr.str_("model", trd.model), language=language, prompt=tr.opt_str("prompt"))
    tr.finish()

    connect_timeout_s = sec.num("connect_timeout_s", d.connect_timeout_s, lo=1, hi=120)
    reseed_turns = sec.int_("reseed_turns", d.reseed_turns, lo=0, hi=100)
    keepalive_s = sec.num("keepalive_s", d.keepalive_s, lo=0.1, hi=120)
    rollover_margin_s = sec.num("rollover_margin_s", d.rollover_margin_s, lo=5, hi=1800)
    rmin = sec.num("reconnect_min_s", d.reconnect_min_s, lo=0.01, hi=60)
    rmax = sec.num("reconnect_max_s", d.reconnect_max_s, lo=0.1, hi=3600)
    if rmax < rmin:
        sec.bad("reconnect_max_s", f"{rmax:g} is below reconnect_min_s ({rmin:g})")
    max_transcript_bytes = sec.int_("max_transcript_bytes", d.max_transcript_bytes,
                                    lo=1024, hi=16 << 20)
    max_pending_items = sec.int_("max_pending_items", d.max_pending_items, lo=4, hi=10_000)

    api_key = _credential(sec, "openai_api_key", environ)
    if (api_key is None and parts is not None
            and not sec.problems.has("credentials.openai_api_key")
            and parts.hostname and not _is_loopback(parts.hostname)):
        sec.problems.add(
            "credentials.openai_api_key",
            f"{_missing_credential('openai_api_key')} (needed for {parts.hostname})",
        )
    sec.finish()
    return RealtimeSettings(
        url=url, model=model, voice=voice, instructions=instructions, relay=relay,
        turn_detection=turn, transcription=transcription, connect_timeout_s=connect_timeout_s,
        reseed_turns=reseed_turns, rollover_margin_s=rollover_margin_s, keepalive_s=keepalive_s,
        reconnect_min_s=rmin,
        reconnect_max_s=max(rmax, rmin),
        max_transcript_bytes=max_transcript_bytes, max_pending_items=max_pending_items,
        api_key=api_key,
    )


def _path(sec: _Section, name: str, base: Path) -> Path | None:
    v = sec.opt_str(name)
    if v is None:
        return None
    p = Path(v).expanduser()
    return p if p.is_absolute() else base / p


def _endpoint(sec: _Section, backend: str, base: Path, *, is_input: bool) -> AudioEndpointSettings:
    raw_dev = sec.raw("device")
    device: str | int = "default"
    if raw_dev is _MISSING or raw_dev is None:
        pass
    elif isinstance(raw_dev, bool) or not isinstance(raw_dev, str | int):
        sec.bad("device", f"expected a device name, index or 'default', got {_kind(raw_dev)}")
    elif isinstance(raw_dev, int) and raw_dev < 0:
        sec.bad("device", f"device index {raw_dev} is negative")
    else:
        device = raw_dev
    path = _path(sec, "file", base)
    rate_hz: int | None = None
    if sec.has("rate_hz") and sec.data.get("rate_hz") is not None:
        rate_hz = sec.int_("rate_hz", 48000, lo=8000, hi=192000)
    else:
        sec.raw("rate_hz")
    channel: int | None = None
    if is_input:
        if sec.has("channel") and sec.data.get("channel") is not None:
            channel = sec.int_("channel", 0, lo=0, hi=31)
        else:
            sec.raw("channel")
    if backend == "file":
        if path is None:
            sec.bad("file", "is required when audio.backend is file")
        elif is_input and not path.is_file():
            sec.bad("file", f"{path} does not exist")
        elif not is_input and not path.parent.is_dir():
            sec.bad("file", f"directory {path.parent} does not exist")
    sec.finish()
    return AudioEndpointSettings(device=device, file=path, channel=channel, rate_hz=rate_hz)


def _audio(sec: _Section, base: Path) -> AudioSettings:
    d = AudioSettings()
    backend = sec.str_("backend", d.backend, choices=AUDIO_BACKENDS)
    s = AudioSettings(
        backend=backend,  # type: ignore[arg-type]
        input=_endpoint(sec.section("input"), backend, base, is_input=True),
        output=_endpoint(sec.section("output"), backend, base, is_input=False),
        echo=sec.str_("echo", d.echo, choices=ECHO_POLICIES),  # type: ignore[arg-type]
        echo_tail_ms=sec.int_("echo_tail_ms", d.echo_tail_ms, lo=0, hi=5000),
        frame_ms=sec.int_("frame_ms", d.frame_ms, lo=10, hi=100),
        input_file_starts=sec.str_(  # type: ignore[arg-type]
            "input_file_starts", d.input_file_starts, choices=("on_mic", "at_start")),
        jitter_ms=sec.int_("jitter_ms", d.jitter_ms, lo=0, hi=1000),
        period_ms=sec.int_("period_ms", d.period_ms, lo=5, hi=100),
        reopen_s=sec.num("reopen_s", d.reopen_s, lo=0.05, hi=300),
        reopen_max_s=sec.num("reopen_max_s", d.reopen_max_s, lo=0.05, hi=3600),
        max_queued_s=sec.num("max_queued_s", d.max_queued_s, lo=1, hi=3600),
    )
    if s.reopen_max_s < s.reopen_s:
        sec.bad("reopen_max_s", f"{s.reopen_max_s:g} is less than reopen_s ({s.reopen_s:g})")
    if s.frame_ms % 10:
        sec.bad("frame_ms", f"{s.frame_ms} is not a multiple of 10")
    sec.finish()
    return s


def _button(top: _Section) -> ButtonSettings | None:
    if not top.has("button") or top.data.get("button") is None:
        top.raw("button")
        return None
    sec = top.section("button")
    d = ButtonSettings()
    raw_pin = sec.raw("pin")
    pin = d.pin
    if raw_pin is _MISSING:
        sec.bad("pin", "is required (a gpiozero pin name such as 17, GPIO17 or BOARD11)")
    else:
        pin = _pin(sec, "pin", raw_pin) or d.pin
    s = ButtonSettings(
        pin=pin,
        pull=sec.str_("pull", d.pull, choices=PULLS),  # type: ignore[arg-type]
        bounce_time_s=sec.num("bounce_time_s", d.bounce_time_s, lo=0, hi=1),
        hold_time_s=sec.num("hold_time_s", d.hold_time_s, lo=0.2, hi=10),
        mode=sec.str_("mode", d.mode, choices=BUTTON_MODES),  # type: ignore[arg-type]
    )
    sec.finish()
    return s


_PIN_RE: Final = r"(GPIO|BCM|BOARD|WPI|J8:|P1:)?\d{1,2}"


def _pin(sec: _Section, name: str, raw: object) -> str | None:
    import re

    if isinstance(raw, bool) or not isinstance(raw, str | int):
        sec.bad(name, f"expected a pin name such as 17, GPIO17 or BOARD11, got {_kind(raw)}")
        return None
    pin = str(raw)
    if not re.fullmatch(_PIN_RE, pin, re.IGNORECASE):
        sec.bad(name, f"{pin!r} is not a gpiozero pin name such as 17, GPIO17 or BOARD11")
        return None
    return pin


def _color(sec: _Section, name: str, raw: object) -> tuple[int, int, int] | None:
    if isinstance(raw, str) and len(raw) == 7 and raw.startswith("#"):
        try:
            return (int(raw[1:3], 16), int(raw[3:5], 16), int(raw[5:7], 16))
        except ValueError:
            pass
    if (isinstance(raw, list) and len(raw) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                    for c in raw)):
        return (raw[0], raw[1], raw[2])
    sec.bad(name, f"expected a colour as \"#rrggbb\" or [r, g, b] (0-255), got {raw!r:.40}")
    return None


def _leds(sec: _Section) -> LedSettings:
    d = LedSettings()
    driver = sec.str_("driver", d.driver, choices=LED_DRIVERS)
    patterns = dict(DEFAULT_PATTERNS)
    ps = sec.section("patterns")
    for state in list(ps.data):
        if state not in DEFAULT_PATTERNS:
            continue  # reported as unknown by finish()
        one = ps.section(str(state))
        base = DEFAULT_PATTERNS[str(state)]
        effect = one.str_("effect", base.effect, choices=EFFECTS)
        color = base.color
        raw = one.raw("color")
        if raw is not _MISSING:
            color = _color(one, "color", raw) or base.color
        period = one.num("period_s", base.period_s, lo=0.05, hi=60)
        patterns[str(state)] = Pattern(effect, color, period)  # type: ignore[arg-type]
        one.finish()
    ps.finish()
    pins: list[str] = []
    raw_pins = sec.raw("pins")
    if raw_pins is not _MISSING and raw_pins is not None:
        items = raw_pins if isinstance(raw_pins, list) else [raw_pins]
        for i, p in enumerate(items):
            pin = _pin(sec, f"pins[{i}]", p)
            if pin is not None:
                pins.append(pin)
    kind = sec.str_("kind", d.kind, choices=GPIO_KINDS)
    power_raw = sec.raw("power_pin")
    power = None if power_raw in (_MISSING, None) else _pin(sec, "power_pin", power_raw)
    active_raw = sec.raw("active_high")
    active_high = d.active_high
    if active_raw is not _MISSING:
        if isinstance(active_raw, bool):
            active_high = active_raw
        else:
            sec.bad("active_high", f"expected true or false, got {_kind(active_raw)}")
    s = LedSettings(
        driver=driver, patterns=patterns,  # type: ignore[arg-type]
        fps=sec.int_("fps", d.fps, lo=1, hi=30), kind=kind,  # type: ignore[arg-type]
        pins=tuple(pins), active_high=active_high,
        pixels=sec.int_("pixels", d.pixels, lo=1, hi=1024),
        brightness=sec.int_("brightness", d.brightness, lo=0, hi=31),
        color_order=sec.str_("color_order", d.color_order, choices=COLOR_ORDERS),
        spi_bus=sec.int_("spi_bus", d.spi_bus, lo=0, hi=9),
        spi_device=sec.int_("spi_device", d.spi_device, lo=0, hi=9),
        power_pin=power,
    )
    if driver == "gpio":
        need = {"led": 1, "pwm": 1, "rgb": 3}.get(kind)
        if not pins:
            sec.bad("pins", "is required when leds.driver is gpio")
        elif need is not None and len(pins) != need:
            sec.bad("pins", f"kind {kind} takes {need} pin(s), got {len(pins)}")
    sec.finish()
    return s


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


def _transcripts(sec: _Section, base: Path, environ: Mapping[str, str]) -> TranscriptSettings:
    d = TranscriptSettings()
    sink = sec.str_("sink", d.sink, choices=SINKS)
    outbox = _path(sec, "outbox_dir", base) or d.outbox_dir
    subs: dict[str, _Section] = {}
    for name in ("jsonl", "webhook", "supabase", "postgres"):
        subs[name] = sec.section(name)
    jsonl_path = _path(subs["jsonl"], "path", base)
    # only the configured sink's credential is read: a stale file for another one is
    # none of this configuration's business
    webhook_token = _credential(sec, "webhook_token", environ) if sink == "webhook" else None
    supabase_key = _credential(sec, "supabase_key", environ) if sink == "supabase" else None
    postgres_dsn = _credential(sec, "postgres_dsn", environ) if sink == "postgres" else None
    webhook_url = _url(subs["webhook"], "url", ("http", "https"), sends=(
        "the bearer token (credential webhook_token)" if webhook_token else None))
    supabase_url = _url(subs["supabase"], "url", ("http", "https"),
                        sends="the key (credential supabase_key)")
    for sub in subs.values():
        sub.finish()

    def need(ok: object, key: str, what: str) -> None:
        if not ok and not sec.problems.has(key):  # once per key
            sec.problems.add(key, what)

    if sink == "jsonl":
        need(jsonl_path, "transcripts.jsonl.path", "is required when transcripts.sink is jsonl")
        if jsonl_path is not None and not jsonl_path.parent.is_dir():
            sec.problems.add("transcripts.jsonl.path",
                             f"directory {jsonl_path.parent} does not exist")
    elif sink == "webhook":
        need(webhook_url, "transcripts.webhook.url",
             "is required when transcripts.sink is webhook")
    elif sink == "supabase":
        need(supabase_url, "transcripts.supabase.url",
             "is required when transcripts.sink is supabase")
        need(supabase_key, "credentials.supabase_key", _missing_credential("supabase_key"))
    elif sink == "postgres":
        need(postgres_dsn, "credentials.postgres_dsn", _missing_credential("postgres_dsn"))
        if postgres_dsn is not None:
            why = dsn_problem(postgres_dsn.reveal())
            if why is not None:
                where = credential_source("postgres_dsn", environ)
                sec.problems.add("credentials.postgres_dsn", f"{where} {why}")
    s = TranscriptSettings(
        sink=sink, outbox_dir=outbox, jsonl_path=jsonl_path,  # type: ignore[arg-type]
        webhook_url=webhook_url, webhook_token=webhook_token, supabase_url=supabase_url,
        supabase_key=supabase_key, postgres_dsn=postgres_dsn,
        timeout_s=sec.num("timeout_s", d.timeout_s, lo=0.5, hi=300),
        max_records=sec.int_("max_records", d.max_records, lo=1, hi=10_000_000),
        max_bytes=sec.int_("max_bytes", d.max_bytes, lo=10_000, hi=100_000_000_000),
        max_drafts=sec.int_("max_drafts", d.max_drafts, lo=1, hi=10_000),
        retry_max_s=sec.num("retry_max_s", d.retry_max_s, lo=1, hi=86_400),
    )
    sec.finish()
    return s


POSTGRES_PACKAGES: Final = ("the postgres sink needs psycopg 3 and libpq: sudo apt install "
                            "libpq5, and pip install 'psycopg>=3.1' in the venv")


def dsn_problem(dsn: str) -> str | None:
    """Why libpq cannot parse ``dsn``, or None; the password is never shown.

    The DSN's password is registered as a secret (redacted from every log line), since
    libpq and the server quote parts of a connection string in their messages.
    """
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # psycopg without the system libpq fails to import too
        return POSTGRES_PACKAGES
    try:
        params = conninfo_to_dict(dsn)
    except Exception as e:  # noqa: BLE001 - psycopg.ProgrammingError and whatever else
        # libpq quotes the part it choked on, which may be the password: never shown
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        elided = guard.printable(_QUOTED.sub(_elide, first), 200)
        return (f"is not a valid connection string: {elided}; see "
                "https://www.postgresql.org/docs/current/libpq-connect.html")
    password = params.get("password")
    if isinstance(password, str):
        guard.register_secret(password)
    return None


_QUOTED: Final = re.compile(r'"([^"]*)"')


def _elide(m: re.Match[str]) -> str:
    return m.group(0) if len(m.group(1)) <= 2 else '"…"'  # "=" stays: what is missing


def _tools(sec: _Section, base: Path, environ: Mapping[str, str]) -> ToolSettings:
    d = ToolSettings()
    bt = sec.section("builtin")
    enabled = []
    for name in BUILTIN_TOOLS:
        v = bt.raw(name)
        if v is _MISSING or v is True:
            enabled.append(name)
        elif v is not False:
            bt.bad(name, f"expected true or false, got {_kind(v)}")
    bt.finish()
    tz = sec.opt_str("timezone")
    if tz is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            sec.bad("timezone", f"unknown time zone {guard.printable(tz, 60)!r}; use an IANA "
                                "name like Europe/Berlin")
            tz = None
    volume_file = _path(sec, "volume_file", base)
    timeout_s = sec.num("timeout_s", d.timeout_s, lo=0.1, hi=300)
    raw = sec.raw("http")
    http: list[HttpToolSettings] = []
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list):
            sec.bad("http", f"expected a list of tools, got {_kind(raw)}")
        else:
            names = set(BUILTIN_TOOL_NAMES)
            for i, entry in enumerate(raw):
                tool = _http_tool(_Section(entry, sec.key(f"http[{i}]"), sec.problems),
                                  environ, names)
                if tool is not None:
                    names.add(tool.name)
                    http.append(tool)
    floor = sec.int_("volume_floor_percent", d.volume_floor_percent, lo=0, hi=100)
    sec.finish()
    return ToolSettings(builtin=tuple(enabled), timezone=tz, volume_file=volume_file,
                        http=tuple(http), timeout_s=timeout_s, volume_floor_percent=floor)


def _http_tool(sec: _Section, environ: Mapping[str, str],
               taken: set[str]) -> HttpToolSettings | None:
    name = sec.str_("name", "")
    if not sec.has("name"):
        sec.bad("name", "is required")
    elif not TOOL_NAME_RE.match(name):
        sec.bad("name", f"{guard.printable(name, 80)!r} must be 1-64 letters, digits, _ or -")
    elif name in taken:
        sec.bad("name", f"{name!r} is already the name of another tool")
    description = sec.str_("description", "")
    if not sec.has("description"):
        sec.bad("description", "is required: the model decides from it when to call the tool")
    params = sec.raw("parameters")
    if params is _MISSING or params is None:
        params = {"type": "object", "properties": {}}
    schema_ok = False
    if not isinstance(params, dict) or params.get("type") != "object":
        sec.bad("parameters", "must be a JSON schema of type object")
    elif not _is_json(params):
        sec.bad("parameters", "holds a value JSON cannot carry (an unquoted date, binary "
                              "or a set?); quote it")
    elif (ref := _remote_ref(params)) is not None:
        # fastjsonschema would fetch it (http://, file://) at every start: the schema
        # must be all in the config
        sec.bad("parameters", f"refers to {guard.printable(ref, 80)!r}: only references "
                              "inside the schema (\"#/...\") are allowed")
    else:
        import fastjsonschema

        try:
            fastjsonschema.compile(params)
            schema_ok = True
        except fastjsonschema.JsonSchemaDefinitionException as e:
            sec.bad("parameters", f"is not a valid JSON schema: {guard.printable(e, 200)}")
        except Exception as e:  # noqa: BLE001 - the compiler on odd input: still the key
            sec.bad("parameters", f"is not a valid JSON schema ({type(e).__name__}: "
                                  f"{guard.printable(e, 120)})")
    props = params.get("properties", {}) if isinstance(params, dict) else {}
    headers, credentials = _tool_headers(sec.section("headers"), environ)
    url = _url(sec, "url", ("http", "https"), template=True, sends=(
        f"credential {', '.join(credentials)}" if credentials else None)) or ""
    if not sec.has("url"):
        sec.bad("url", "is required")
    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(url)
                  if f is not None]
    except ValueError as e:
        sec.bad("url", f"bad placeholder: {e}")
        fields = []
    for field_name, conv, spec in fields:
        if conv or spec or not isinstance(props, dict) or field_name not in props:
            sec.bad("url", f"placeholder {{{guard.printable(field_name, 40)}}} is not one of "
                           "the parameters")
    method = sec.str_("method", "GET", choices=HTTP_METHODS)
    send = sec.str_("send_arguments", "query" if method in ("GET", "DELETE") else "json",
                    choices=("query", "json", "none"))
    timeout_s = sec.num("timeout_s", 5.0, lo=0.1, hi=120)
    reply_path = sec.opt_str("reply_path")
    max_reply = sec.int_("max_reply_chars", 2000, lo=100, hi=100_000)
    max_bytes = sec.int_("max_reply_bytes", 1_000_000, lo=1024, hi=16_000_000)
    sec.finish()
    if not (name and schema_ok and url and isinstance(params, dict)) or headers is None:
        return None
    return HttpToolSettings(
        name=name, description=description, parameters=dict(params), url=url,
        method=method, send_arguments=send,  # type: ignore[arg-type]
        headers=headers, timeout_s=timeout_s, reply_path=reply_path,
        max_reply_chars=max_reply, max_reply_bytes=max_bytes)


def _is_json(value: object) -> bool:
    """Whether ``value`` is made of JSON's types only (it is sent in session.update)."""
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _remote_ref(schema: object) -> str | None:
    """The first ``$ref`` (or absolute ``$id``) in ``schema`` that points outside it."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref, sid = node.get("$ref"), node.get("$id")
            if isinstance(ref, str) and not ref.startswith("#"):
                return ref
            if isinstance(sid, str) and ":" in sid:
                return sid
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return None


def _tool_headers(hs: _Section, environ: Mapping[str, str]
                  ) -> tuple[tuple[tuple[str, Secret], ...] | None, list[str]]:
    """A tool's headers, credentials filled in, and the credentials they send.

    The headers are None when one of them (or a credential) is unusable.
    """
    headers: list[tuple[str, Secret]] = []
    used: list[str] = []
    ok = True
    for header in list(hs.data):
        value = hs.raw(str(header))
        if not isinstance(header, str) or not HEADER_NAME_RE.match(header):
            hs.problems.add(hs.path, f"{guard.printable(header, 60)!r} is not a header name "
                                     "(letters, digits and !#$%&'*+.^_`|~-)")
            ok = False
            continue
        if not isinstance(value, str):
            hs.bad(header, f"expected a string, got {_kind(value)}")
            ok = False
            continue
        why = credential_problem(CREDENTIAL_RE.sub("", value))
        if why is not None:
            hs.bad(header, why.replace("a credential is one line", "a header is one line")
                   .replace(" (a file may end with one newline)", ""))
            ok = False
            continue
        filled = value
        for cred in CREDENTIAL_RE.findall(value):
            used.append(cred)
            secret = _credential(hs, cred, environ)
            if secret is None:
                ok = False
                if not hs.problems.has(f"credentials.{cred}"):
                    hs.problems.add(f"credentials.{cred}", (
                        f"{_missing_credential(cred)} (used by {hs.key(header)})"))
            else:
                filled = filled.replace("{credential:" + cred + "}", secret.reveal())
        headers.append((header, Secret(filled)))
    return (tuple(headers) if ok else None), used


# --- issue 22 (hands-free): one validator per new section ------------------------------
def _bool(sec: _Section, name: str, default: bool) -> bool:
    v = sec.raw(name)
    if v is _MISSING:
        return default
    if not isinstance(v, bool):
        sec.bad(name, f"expected true or false, got {_kind(v)}")
        return default
    return v


def _wake_word(sec: _Section) -> WakeWordSettings:
    from voiced.audio.wakeword import BUILTIN_MODELS  # no numpy: names only

    d = WakeWordSettings()
    enabled = _bool(sec, "enabled", d.enabled)
    models = d.models
    raw = sec.raw("models")
    if raw is not _MISSING:
        if isinstance(raw, str):
            raw = [raw]
        if (not isinstance(raw, list) or not raw or len(raw) > len(BUILTIN_MODELS)
                or not all(isinstance(m, str) for m in raw)):
            sec.bad("models", f"expected a list of model names ({', '.join(BUILTIN_MODELS)})")
        elif unknown := [m for m in raw if m not in BUILTIN_MODELS]:
            sec.bad("models", f"unknown model {guard.printable(unknown[0])!r}; expected some of: "
                    f"{', '.join(BUILTIN_MODELS)}")
        else:
            models = tuple(dict.fromkeys(raw))
    threshold = None
    if sec.raw("threshold") not in (_MISSING, None):
        threshold = sec.num("threshold", 0.9, lo=0.01, hi=0.99)
    s = WakeWordSettings(enabled=enabled, models=models, threshold=threshold,
                         refractory_s=sec.num("refractory_s", d.refractory_s, lo=0, hi=60))
    sec.finish()
    return s


def _earcons(sec: _Section) -> EarconSettings:
    d = EarconSettings()
    enabled = _bool(sec, "enabled", d.enabled)
    gain = sec.num("gain", d.gain, lo=0, hi=1)
    ev = sec.section("events")
    events = tuple((name, ev.num(name, 1.0, lo=0, hi=1)) for name in EARCON_EVENTS)
    ev.finish()
    sec.finish()
    return EarconSettings(enabled=enabled, gain=gain, events=events)


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
    log_level = top.str_("log_level", "info", choices=LOG_LEVELS)
    realtime = _realtime(top.section("realtime"), env)
    audio = _audio(top.section("audio"), base)
    button = _button(top)
    leds = _leds(top.section("leds"))
    transcripts = _transcripts(top.section("transcripts"), base, env)
    tools = _tools(top.section("tools"), base, env)
    wake_word = _wake_word(top.section("wake_word"))  # issue 22
    earcons = _earcons(top.section("earcons"))  # issue 22
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
                    wake_word=wake_word, earcons=earcons,  # issue 22
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


def diff(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two settings trees."""
    if _same_section(old, new):
        out: list[str] = []
        for f in dataclasses.fields(old):  # type: ignore[arg-type]
            if f.name in ("source_path", "warnings"):
                continue
            key = f"{prefix}.{f.name}" if prefix else f.name
            out += diff(getattr(old, f.name), getattr(new, f.name), key)
        return out
    return [] if old == new else [prefix]


def _same_section(old: object, new: object) -> bool:
    return (dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new)
            and type(old) is type(new))


@dataclass(frozen=True, slots=True)
class Reload:
    """What a SIGHUP does with a new configuration (:func:`reload_split`)."""

    settings: Settings
    """The settings in force after the reload: the live keys' new values, the running
    values of everything else."""
    live: list[str]
    """Changed keys that apply now."""
    restart: list[str]
    """Changed keys that keep their running value until a restart."""


def reload_split(running: Settings, new: Settings) -> Reload:
    """Split a reload into what applies now (fields marked :data:`LIVE`) and the rest."""
    live: list[str] = []
    restart: list[str] = []

    def merge(old: Any, fresh: Any, prefix: str) -> Any:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(old):
            key = f"{prefix}.{f.name}" if prefix else f.name
            was, now = getattr(old, f.name), getattr(fresh, f.name)
            if f.name in ("source_path", "warnings"):  # facts of the new file
                changes[f.name] = now
            elif f.metadata.get("live"):
                if was != now:
                    live.append(key)
                    changes[f.name] = now
            elif _same_section(was, now):
                merged = merge(was, now, key)
                if merged is not was:
                    changes[f.name] = merged
            else:
                restart.extend(diff(was, now, key))
        return dataclasses.replace(old, **changes) if changes else old

    return Reload(merge(running, new, ""), live, restart)


def live_keys(section: type[Any] | None = None, prefix: str = "") -> list[str]:
    """The dotted keys a SIGHUP applies without a restart, from the LIVE marks."""
    out: list[str] = []
    cls = Settings if section is None else section
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("live"):
            out.append(key)
            continue
        for sub in typing.get_args(hints[f.name]) or (hints[f.name],):
            if dataclasses.is_dataclass(sub) and isinstance(sub, type):
                out += live_keys(sub, key)
    return out
