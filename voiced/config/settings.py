"""The settings types: frozen dataclasses, their defaults, and the LIVE marks."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from voiced.config.secrets import Secret

DEFAULT_CONFIG_PATH: Final = "/etc/voiced/voiced.yaml"
# overrides control.socket: a developer who is not root cannot create /run/voiced
CONTROL_SOCKET_ENV: Final = "VOICED_CONTROL_SOCKET"

# Each setting with a fixed set of values has a Literal type; the tuple the validator checks
# against (and the error message lists) is derived from it, so the two cannot drift.
Voice = Literal[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
]
VOICES: Final[tuple[Voice, ...]] = typing.get_args(Voice)
TurnDetectionType = Literal["server_vad", "semantic_vad", "client_vad", "none"]
TURN_DETECTION_TYPES: Final[tuple[TurnDetectionType, ...]] = typing.get_args(TurnDetectionType)
SendArguments = Literal["query", "json", "none"]
SEND_ARGUMENTS: Final[tuple[SendArguments, ...]] = typing.get_args(SendArguments)
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
HTTP_METHODS: Final[tuple[HttpMethod, ...]] = typing.get_args(HttpMethod)
BUILTIN_TOOLS: Final = ("time", "volume", "microphone", "status")
# the functions those groups give the model (voiced/tools/builtin.py defines them; config
# does not import it, to keep fastjsonschema out of check-config): an HTTP tool may not
# take one of these names. tests/test_tools.py checks the two agree.
BUILTIN_TOOL_NAMES: Final = frozenset({"get_time", "set_volume", "mute_microphone",
                                       "end_conversation", "device_status"})
TOOL_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CREDENTIAL_RE: Final = re.compile(r"\{credential:([a-z0-9_]+)\}")
Eagerness = Literal["low", "medium", "high", "auto"]
EAGERNESS: Final[tuple[Eagerness, ...]] = typing.get_args(Eagerness)
AudioCodec = Literal["pcm16", "opus"]
AUDIO_CODECS: Final[tuple[AudioCodec, ...]] = typing.get_args(AudioCodec)
InputFileStart = Literal["on_mic", "at_start"]
INPUT_FILE_STARTS: Final[tuple[InputFileStart, ...]] = typing.get_args(InputFileStart)
AudioBackend = Literal["pyaudio", "file"]
AUDIO_BACKENDS: Final[tuple[AudioBackend, ...]] = typing.get_args(AudioBackend)
EchoPolicy = Literal["half_duplex", "full_duplex", "aec"]
ECHO_POLICIES: Final[tuple[EchoPolicy, ...]] = typing.get_args(EchoPolicy)
EchoSetting = Literal["auto", "half_duplex", "full_duplex", "aec"]
ECHO_SETTINGS: Final[tuple[EchoSetting, ...]] = typing.get_args(EchoSetting)
LedDriver = Literal["none", "gpio", "apa102"]
LED_DRIVERS: Final[tuple[LedDriver, ...]] = typing.get_args(LedDriver)
Sink = Literal["none", "jsonl", "webhook", "supabase", "postgres"]
SINKS: Final[tuple[Sink, ...]] = typing.get_args(Sink)
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: Final[tuple[LogLevel, ...]] = typing.get_args(LogLevel)
SessionOwner = Literal["device", "relay"]
SESSION_OWNERS: Final[tuple[SessionOwner, ...]] = typing.get_args(SessionOwner)
ButtonMode = Literal["toggle", "push_to_talk"]
BUTTON_MODES: Final[tuple[ButtonMode, ...]] = typing.get_args(ButtonMode)
Pull = Literal["up", "down"]
PULLS: Final[tuple[Pull, ...]] = typing.get_args(Pull)
Api = Literal["realtime", "live"]
APIS: Final[tuple[Api, ...]] = typing.get_args(Api)
LiveModel = Literal["gpt-live-1", "gpt-live-1.1"]
LIVE_MODELS: Final[tuple[LiveModel, ...]] = typing.get_args(LiveModel)
# the SDK's built-in voice list (openai/types/live, 3.63); which ones each model
# accepts is not known (docs/gpt-live-protocol.md, Q8)
LiveVoice = Literal[
    "alloy", "ash", "ballad", "beacon", "bossa", "cedar", "cinder", "coral", "delta", "echo",
    "gleam", "marin", "meridian", "quartz", "ripple", "sage", "shida", "shimmer", "stone",
    "tempo", "verse", "vesper", "willow",
]
LIVE_VOICES: Final[tuple[LiveVoice, ...]] = typing.get_args(LiveVoice)

# Field metadata: a SIGHUP applies this setting without a restart. Every other setting
# keeps its running value until the daemon restarts (reload_split). A section marked LIVE
# is live as a whole; an unmarked section is live where its own fields are.
LIVE: Final = MappingProxyType({"live": True})


# Bounds on what the loader accepts: a config is a few kB written by a person
MAX_CONFIG_BYTES: Final = 1_000_000
MAX_DEPTH: Final = 32
"""YAML nesting; the deepest real key (a tool's JSON schema) needs far fewer."""
MAX_VALUES: Final = 100_000
"""Values in the document once YAML aliases are expanded (an alias bomb is billions)."""
MAX_DIGITS: Final = 40
# RFC 9110 token: what a header name may be
HEADER_NAME_RE: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")




@dataclass(frozen=True, slots=True)
class TurnDetectionSettings:
    """How the end of the user's turn is found."""

    type: TurnDetectionType = "server_vad"
    """server_vad (default), semantic_vad, client_vad (the device finds the turns and
    sends only speech), or none (push to talk: the client commits)."""
    threshold: float = 0.5
    """server_vad activation threshold, 0..1."""
    prefix_padding_ms: int = 300
    """Audio kept before detected speech."""
    silence_duration_ms: int = 500
    """Silence that ends a turn."""
    eagerness: Eagerness = "auto"
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
    """Sent as ?conversation_id=; None sends none: the relay creates the conversation and
    announces it (conversation_created), and the device adopts it. Read once, when the
    daemon starts its first conversation; a long press always lets the relay make one."""
    session_owner: SessionOwner = "relay"
    """Who configures the session: relay (its instructions, tools, transcription, voice
    and VAD stand; the device's session.update carries only the audio formats and, for
    push to talk or client_vad, turn_detection null) or device (the device's
    session.update carries its realtime settings, as without a relay)."""
    audio_codec: AudioCodec = field(default="pcm16", metadata=LIVE)  # opus:
    """pcm16 | opus: offer Opus to the relay (it may decline: then PCM16). Read at each
    connection (voiced/opus_link.py)."""


@dataclass(frozen=True, slots=True)
class LiveApiSettings:
    """GPT-Live (``realtime.api: live``): where, which model, and when sessions close.

    Read at each new session (a reload applies them from the next one).
    """

    url: str = "wss://api.openai.com/v1/live/sessions"
    """OpenAI's Live endpoint, or ws://127.0.0.1:8765/v1/live/sessions for `voiced sim`."""
    model: LiveModel = "gpt-live-1.1"
    """gpt-live-1 or gpt-live-1.1 (better transcription, same price)."""
    voice: LiveVoice = "marin"
    """Output voice (fixed for a session)."""
    quiet_close_s: float = 30.0
    """Close the session this long after the last sign of conversation: it bills every
    second it is open, silence included."""
    ack_delay_ms: int = 600
    """delegation.acknowledgement_delay_ms: a tool answering sooner pre-empts the
    model's "let me check"."""
    delegation_wait_ms: int = 1500
    """Timeline to wait for the words a delegation is about before answering that no
    tool matches (a delegation names no task)."""
    prestart_ms: int = 2000
    """Mic audio kept while a session starts, sent as a burst once it has (0: dropped;
    whether a burst moves the service's timeline faster is not known, Q3)."""
    interrupt_hold_ms: int = 1000
    """After a button interrupt, reply audio is dropped until the track has been silent
    this long (there is no truncate or cancel)."""
    close_wait_s: float = 5.0
    """After session.close, wait this long for session.closed before closing the socket."""


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    """The Realtime connection and the session it configures."""

    api: Api = "realtime"
    """realtime (the Realtime API, or a relay in front of it) or live (GPT-Live, see
    ``live``); a restart applies a change."""
    live: LiveApiSettings = field(default_factory=LiveApiSettings)
    """GPT-Live's own settings (used with ``api: live``)."""
    url: str = field(default="wss://api.openai.com/v1/realtime", metadata=LIVE)
    """OpenAI's URL, a relay's URL, or ws://127.0.0.1:8765/v1/realtime for `voiced sim`."""
    model: str = field(default="gpt-realtime-2.1", metadata=LIVE)
    """Realtime model, sent as ?model= (not with a relay)."""
    voice: Voice = field(default="marin", metadata=LIVE)
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
    hardware_aec: bool = False
    """Input only: the mic cancels the speaker's echo itself (a speakerphone, a headset):
    ``audio.echo: auto`` then runs full duplex without the software canceller."""


@dataclass(frozen=True, slots=True)
class AudioSettings:
    """Mic, speaker and echo policy."""

    backend: AudioBackend = "pyaudio"
    """pyaudio (real devices) or file (WAV in, WAV out at real-time pace)."""
    input: AudioEndpointSettings = field(default_factory=AudioEndpointSettings)
    """The microphone."""
    output: AudioEndpointSettings = field(default_factory=AudioEndpointSettings)
    """The speaker."""
    echo: EchoPolicy = "half_duplex"
    """In force (``echo_setting`` resolved): half_duplex: mic muted while the speaker
    plays (and a tail after); full_duplex: always open (a headset, or a mic with hardware
    echo cancellation); aec: always open, with software echo cancellation (speexdsp; back
    to half duplex while it is bypassed)."""
    # the two below are not keys of their own to a reload: their effect is ``echo``
    echo_setting: EchoSetting = field(default="auto", metadata={"shadow": True})
    """What the config asks for: one of the policies, or auto (the default): aec where
    libspeexdsp loads and the mic has no echo cancellation of its own, full_duplex for
    a mic that has (``input.hardware_aec``), else half_duplex; the file backend (no
    acoustic path) keeps half_duplex."""
    echo_reason: str = field(default="", metadata={"shadow": True})
    """Why auto chose ``echo`` (logged at start, in ``voiced check-config``)."""
    echo_tail_ms: int = 300
    """half_duplex: how long the mic stays muted after playback ends."""
    frame_ms: int = 20
    """Size of one mic frame the session core takes (client VAD, the half-duplex gate and
    the echo canceller work frame by frame)."""
    block_ms: int = 60
    """pyaudio: mic audio each PortAudio callback reads and hands the event loop at once,
    a multiple of ``frame_ms``; its frames go to the server as one append. Larger: fewer
    wakeups (less CPU), a later first frame after a press. With ``echo: aec`` it is
    ``frame_ms`` (the canceller reads the speaker's position as each frame is read)."""
    input_file_starts: InputFileStart = "on_mic"
    """file backend: the input WAV starts when the mic is switched on (a person speaking
    after the press), or as soon as the daemon starts."""
    jitter_ms: int = 80
    """pyaudio: reply audio buffered before playback starts (absorbs network jitter)."""
    period_ms: int = 20
    """pyaudio: speaker buffer size; a stop hands silence from the next period on (what
    the device has buffered, about two periods, still plays)."""
    speaker_idle_s: float = 0.5
    """pyaudio: the speaker's stream stops this long after the last audio played (nothing
    reaches Python while idle) and starts again with the next reply or earcon; not with
    ``echo: aec``, whose reference must keep running."""
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
    pull: Pull = "up"
    """up: the button connects the pin to ground."""
    bounce_time_s: float = 0.03
    """Debounce window."""
    hold_time_s: float = 1.0
    """A press this long is a long press (new conversation)."""
    mode: ButtonMode = "toggle"
    """toggle: a press toggles the mic; push_to_talk: hold to talk."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """How the orb shows one state."""

    effect: Effect
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
Effect = Literal["off", "solid", "blink", "pulse", "chase"]
EFFECTS: Final[tuple[Effect, ...]] = typing.get_args(Effect)
GpioKind = Literal["led", "pwm", "rgb", "board"]
GPIO_KINDS: Final[tuple[GpioKind, ...]] = typing.get_args(GpioKind)
ColorOrder = Literal["rgb", "rbg", "grb", "gbr", "brg", "bgr"]
COLOR_ORDERS: Final[tuple[ColorOrder, ...]] = typing.get_args(ColorOrder)


@dataclass(frozen=True, slots=True)
class LedSettings:
    """The orb (LED ring)."""

    driver: LedDriver = "none"
    """none logs state changes only; gpio drives LEDs through gpiozero; apa102 a ring."""
    patterns: dict[str, Pattern] = field(default_factory=lambda: dict(DEFAULT_PATTERNS),
                                         metadata=LIVE)
    """State name -> pattern (defaults above; the YAML overrides per state)."""
    fps: int = 30
    """Animation frames per second (at most 30)."""
    kind: GpioKind = "pwm"
    """gpio: one on/off LED, one PWM LED, an RGB LED (pins r, g, b), or a board of N PWM LEDs."""
    pins: tuple[str, ...] = ()
    """gpio: the LED pin(s)."""
    active_high: bool = True
    """gpio: False for LEDs wired to light when the pin is low (common-anode RGB)."""
    pixels: int = 12
    """apa102: number of LEDs in the ring."""
    brightness: int = 10
    """apa102: global brightness 0-31."""
    color_order: ColorOrder = "bgr"
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

    sink: Sink = "none"
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
    method: HttpMethod = "GET"
    """GET, POST, PUT, PATCH or DELETE."""
    send_arguments: SendArguments = "query"
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


EarconEvent = Literal["listening_started", "listening_stopped", "reconnected", "error",
                      "new_conversation"]
EARCON_EVENTS: Final[tuple[EarconEvent, ...]] = typing.get_args(EarconEvent)


@dataclass(frozen=True, slots=True)
class EarconSettings:
    """Short sounds for what the device just did, through the speaker."""

    enabled: bool = False
    gain: float = 0.5
    """Loudness of every earcon, 0..1 of the loudest; scaled by the speaker volume too."""
    events: tuple[tuple[EarconEvent, float], ...] = tuple((e, 1.0) for e in EARCON_EVENTS)
    """(event, gain 0..1) per event; 0 switches one event's earcon off."""

    def gain_of(self, event: str) -> float:
        """The configured gain of ``event`` (0 when off)."""
        if self.enabled:
            for name, gain in self.events:
                if name == event:
                    return self.gain * gain
        return 0.0


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
    wake_word: WakeWordSettings = field(default_factory=WakeWordSettings)
    earcons: EarconSettings = field(default_factory=EarconSettings)
    log_level: LogLevel = field(default="info", metadata=LIVE)
    """debug, info, warning or error."""
    source_path: Path | None = None
    """The file these settings came from."""
    warnings: tuple[tuple[str, str], ...] = ()
    """(dotted key, message): things that work but should be fixed (a credential file
    other users may read)."""
