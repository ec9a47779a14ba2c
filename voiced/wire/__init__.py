r"""Realtime API (GA dialect) wire types.

Client events we send are ``TypedDict`` params built by small functions (:mod:`.client`);
server events we act on are frozen dataclasses built by :func:`parse_server_event` through
one registry of typed parsers (:mod:`.server`). Any other event type parses to
:class:`Unhandled`; a frame that is not a JSON object with a string ``type``, or whose
fields have the wrong types, raises :class:`MalformedEvent`. :mod:`.frames` holds the
frame-level checks and :mod:`.fields` the typed field readers; both dialects' parsers
(this one and :mod:`voiced.live.wire`) use them.

Server frames are hostile input (docs/architecture.md, "Hostile input"): nesting deeper
than :data:`MAX_DEPTH` is refused before anything recurses on it, ids longer than
:data:`MAX_ID_CHARS` are refused, and every string is valid Unicode when it leaves this
package (a lone UTF-16 surrogate, which a JSON escape such as ``\ud83d`` can carry and no
UTF-8 encoder accepts, becomes U+FFFD), except a transcript delta's text: a relay may cut
a surrogate pair across two deltas, so the core joins them before repairing.

NOTE: the only audio format used on the wire is PCM16 LE mono at 24 kHz (GA's
``{"type": "audio/pcm", "rate": 24000}``); :data:`SAMPLE_RATE` pins it in one place.
"""

from __future__ import annotations

from voiced.wire.client import (
    AudioFormatParam,
    AudioInputParam,
    AudioOutputParam,
    ClientEvent,
    ConversationItemCreateParam,
    ConversationItemTruncateParam,
    FunctionCallOutputItemParam,
    FunctionToolParam,
    InputAudioBufferAppendParam,
    InputAudioBufferClearParam,
    InputAudioBufferCommitParam,
    MessageItemParam,
    ResponseCancelParam,
    ResponseCreateParam,
    SessionAudioParam,
    SessionParam,
    SessionUpdateParam,
    TextContentParam,
    TranscriptionParam,
    TurnDetectionParam,
    audio_append,
    describe,
    encode,
    function_output_item,
    text_item,
)
from voiced.wire.fields import (
    error_message,
    expiry,
    opt_id,
    opt_str,
    req_id,
    req_int,
    req_obj,
    req_pcm,
    req_str,
)
from voiced.wire.frames import (
    BYTES_PER_SAMPLE,
    LATEST_EPOCH_S,
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_MESSAGE_CHARS,
    SAMPLE_RATE,
    MalformedEvent,
    load_frame,
    pcm_ms,
    utf8_len,
    valid_text,
)
from voiced.wire.server import (
    AudioDelta,
    AudioDone,
    AudioTranscriptDelta,
    AudioTranscriptDone,
    BufferCleared,
    BufferCommitted,
    FunctionCallDone,
    InputTranscriptionCompleted,
    InputTranscriptionFailed,
    ItemTruncated,
    RelayConversationCreated,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    Unhandled,
    parse_server_event,
)

__all__ = [
    'AudioDelta', 'AudioDone', 'AudioFormatParam', 'AudioInputParam', 'AudioOutputParam',
    'AudioTranscriptDelta', 'AudioTranscriptDone', 'BYTES_PER_SAMPLE', 'BufferCleared',
    'BufferCommitted',
    'ClientEvent', 'ConversationItemCreateParam', 'ConversationItemTruncateParam',
    'FunctionCallDone', 'FunctionCallOutputItemParam', 'FunctionToolParam',
    'InputAudioBufferAppendParam', 'InputAudioBufferClearParam', 'InputAudioBufferCommitParam',
    'InputTranscriptionCompleted', 'InputTranscriptionFailed', 'ItemTruncated',
    'LATEST_EPOCH_S', 'MAX_DEPTH', 'MAX_ID_CHARS', 'MAX_MESSAGE_CHARS', 'MalformedEvent',
    'MessageItemParam', 'RelayConversationCreated', 'ResponseCancelParam',
    'ResponseCreateParam', 'ResponseCreated', 'ResponseDone', 'SAMPLE_RATE', 'ServerError',
    'ServerEvent', 'SessionAudioParam', 'SessionCreated', 'SessionParam', 'SessionUpdateParam',
    'SessionUpdated', 'SpeechStarted', 'SpeechStopped', 'TextContentParam',
    'TranscriptionParam', 'TurnDetectionParam', 'Unhandled', 'audio_append', 'describe',
    'encode', 'error_message', 'expiry', 'function_output_item', 'load_frame', 'opt_id',
    'opt_str', 'parse_server_event', 'pcm_ms', 'req_id', 'req_int', 'req_obj', 'req_pcm',
    'req_str', 'text_item', 'utf8_len', 'valid_text'
]
