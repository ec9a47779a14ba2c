"""YAML configuration into frozen, typed settings, with strict validation and secrets.

Every problem found is collected and reported at once (``ConfigError.problems``), each
named by its dotted key. Secrets are read from ``$CREDENTIALS_DIRECTORY/<name>`` first,
then from the environment, and are wrapped in :class:`Secret` so that they never show in
a repr, a log line or an error message.

The package: ``settings`` (the types and their LIVE marks), ``secrets`` (credentials),
``sections`` (reading one mapping; shared value checks), one validator module per section
(``realtime``, ``audio``, ``hardware``, ``transcripts``, ``tools``, ``hands_free`` for
``wake_word`` and ``earcons``), ``reading`` (the YAML loader and :func:`parse`) and
``reload`` (SIGHUP). Every public name is importable from here.
"""

from __future__ import annotations

from voiced.config.reading import load, parse, read_yaml, socket_path_problem
from voiced.config.reload import Reload, diff, live_keys, reload_split
from voiced.config.secrets import (
    CREDENTIAL_ENV,
    CREDENTIAL_PREFIX,
    INSTALLED_CREDENTIALS_DIR,
    MAX_CREDENTIAL_BYTES,
    Secret,
    credential_env,
    credential_problem,
    credential_source,
    read_credential,
)
from voiced.config.sections import url_problem
from voiced.config.settings import (
    APIS,
    AUDIO_BACKENDS,
    BUILTIN_TOOL_NAMES,
    BUILTIN_TOOLS,
    BUTTON_MODES,
    COLOR_ORDERS,
    CONTROL_SOCKET_ENV,
    CREDENTIAL_RE,
    DEFAULT_CONFIG_PATH,
    DEFAULT_PATTERNS,
    EAGERNESS,
    EARCON_EVENTS,
    ECHO_POLICIES,
    EFFECTS,
    GPIO_KINDS,
    HEADER_NAME_RE,
    HTTP_METHODS,
    LED_DRIVERS,
    LIVE,
    LIVE_MODELS,
    LIVE_VOICES,
    LOG_LEVELS,
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_DIGITS,
    MAX_VALUES,
    PULLS,
    SINKS,
    TOOL_NAME_RE,
    TURN_DETECTION_TYPES,
    VOICES,
    AudioEndpointSettings,
    AudioSettings,
    ButtonSettings,
    ControlSettings,
    EarconSettings,
    HttpToolSettings,
    LedSettings,
    LiveApiSettings,
    Pattern,
    RealtimeSettings,
    RelaySettings,
    Settings,
    ToolSettings,
    TranscriptionSettings,
    TranscriptSettings,
    TurnDetectionSettings,
    WakeWordSettings,
)
from voiced.config.transcripts import POSTGRES_PACKAGES, dsn_problem

__all__ = [
    'APIS', 'AUDIO_BACKENDS', 'AudioEndpointSettings', 'AudioSettings', 'BUILTIN_TOOLS',
    'BUILTIN_TOOL_NAMES', 'BUTTON_MODES', 'ButtonSettings', 'COLOR_ORDERS',
    'CONTROL_SOCKET_ENV', 'CREDENTIAL_ENV', 'CREDENTIAL_PREFIX', 'CREDENTIAL_RE',
    'ControlSettings', 'DEFAULT_CONFIG_PATH', 'DEFAULT_PATTERNS', 'EARCON_EVENTS', 'EarconSettings',
    'EAGERNESS', 'ECHO_POLICIES',
    'EFFECTS', 'GPIO_KINDS', 'HEADER_NAME_RE', 'HTTP_METHODS', 'HttpToolSettings',
    'INSTALLED_CREDENTIALS_DIR', 'LED_DRIVERS', 'LIVE', 'LIVE_MODELS', 'LIVE_VOICES',
    'LOG_LEVELS', 'LedSettings', 'LiveApiSettings',
    'MAX_CONFIG_BYTES', 'MAX_CREDENTIAL_BYTES', 'MAX_DEPTH', 'MAX_DIGITS', 'MAX_VALUES',
    'POSTGRES_PACKAGES', 'PULLS', 'Pattern', 'RealtimeSettings', 'RelaySettings', 'Reload',
    'SINKS', 'Secret', 'Settings', 'TOOL_NAME_RE', 'TURN_DETECTION_TYPES', 'ToolSettings',
    'TranscriptSettings', 'TranscriptionSettings', 'TurnDetectionSettings', 'VOICES',
    'WakeWordSettings',
    'credential_env', 'credential_problem', 'credential_source', 'diff', 'dsn_problem',
    'live_keys', 'load', 'parse', 'read_credential', 'read_yaml', 'reload_split',
    'socket_path_problem', 'url_problem'
]
