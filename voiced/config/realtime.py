"""The ``realtime:`` section's validator."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from voiced.config.secrets import _credential, _missing_credential
from voiced.config.sections import _is_loopback, _Section, url_problem
from voiced.config.settings import (
    APIS,
    AUDIO_CODECS,
    EAGERNESS,
    LIVE_MODELS,
    LIVE_VOICES,
    SESSION_OWNERS,
    TURN_DETECTION_TYPES,
    VOICES,
    LiveApiSettings,
    RealtimeSettings,
    RelaySettings,
    TranscriptionSettings,
    TurnDetectionSettings,
)


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


def _live(sec: _Section) -> tuple[LiveApiSettings, SplitResult | None]:
    """``realtime.live``: GPT-Live's own settings; the URL's parts, None if bad."""
    d = LiveApiSettings()
    url, parts = _ws_url(sec, d.url)
    if parts is not None and not parts.path.rstrip("/").endswith("/live/sessions"):
        sec.bad("url", f"{parts.path or '/'} is not a GPT-Live path (…/v1/live/sessions)")
    live = LiveApiSettings(
        url=url, model=sec.choice("model", d.model, LIVE_MODELS),
        voice=sec.choice("voice", d.voice, LIVE_VOICES),
        quiet_close_s=sec.num("quiet_close_s", d.quiet_close_s, lo=5, hi=3600),
        ack_delay_ms=sec.int_("ack_delay_ms", d.ack_delay_ms, lo=0, hi=10_000),
        delegation_wait_ms=sec.int_("delegation_wait_ms", d.delegation_wait_ms,
                                    lo=0, hi=30_000),
        prestart_ms=sec.int_("prestart_ms", d.prestart_ms, lo=0, hi=10_000),
        interrupt_hold_ms=sec.int_("interrupt_hold_ms", d.interrupt_hold_ms,
                                   lo=100, hi=10_000),
        close_wait_s=sec.num("close_wait_s", d.close_wait_s, lo=0.5, hi=60))
    sec.finish()
    return live, parts


def _realtime(sec: _Section, environ: Mapping[str, str]) -> RealtimeSettings:
    d = RealtimeSettings()
    api = sec.choice("api", d.api, APIS)
    live, live_parts = _live(sec.section("live"))
    url, parts = _ws_url(sec, d.url)
    model = sec.str_("model", d.model)
    if "preview" in model:
        sec.bad("model", f"{model!r} is a retired beta-era model; use e.g. gpt-realtime-2.1")
    voice = sec.choice("voice", d.voice, VOICES)
    instructions = sec.str_("instructions", d.instructions, allow_empty=True)

    relay: RelaySettings | None = None
    if sec.has("relay") and sec.data.get("relay") is not None:
        rs = sec.section("relay")
        agent_id = rs.str_("agent_id", "")
        if not rs.has("agent_id"):
            rs.bad("agent_id", "is required when realtime.relay is set")
        relay = RelaySettings(agent_id=agent_id, conversation_id=rs.opt_str("conversation_id"),
                              audio_codec=rs.choice("audio_codec", "pcm16", AUDIO_CODECS),
                              session_owner=rs.choice("session_owner", "relay",
                                                      SESSION_OWNERS))
        rs.finish()
        if api == "live":
            sec.bad("api", "live cannot go through realtime.relay (a relay speaks the "
                           "Realtime API); remove the relay or use api: realtime")
    else:
        sec.raw("relay")

    td = sec.section("turn_detection")
    tdd = TurnDetectionSettings()
    td_type = td.choice("type", tdd.type, TURN_DETECTION_TYPES)
    turn = TurnDetectionSettings(
        type=td_type,
        threshold=td.num("threshold", tdd.threshold, lo=0.0, hi=1.0),
        prefix_padding_ms=td.int_("prefix_padding_ms", tdd.prefix_padding_ms, lo=0, hi=5000),
        silence_duration_ms=td.int_("silence_duration_ms", tdd.silence_duration_ms,
                                    lo=100, hi=10000),
        eagerness=td.choice("eagerness", tdd.eagerness, EAGERNESS),
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
    if api == "live":  # the key goes where the sessions are opened
        parts = live_parts
    if (api_key is None and parts is not None
            and not sec.problems.has("credentials.openai_api_key")
            and parts.hostname and not _is_loopback(parts.hostname)):
        sec.problems.add(
            "credentials.openai_api_key",
            f"{_missing_credential('openai_api_key')} (needed for {parts.hostname})",
        )
    sec.finish()
    return RealtimeSettings(
        api=api, live=live,
        url=url, model=model, voice=voice, instructions=instructions, relay=relay,
        turn_detection=turn, transcription=transcription, connect_timeout_s=connect_timeout_s,
        reseed_turns=reseed_turns, rollover_margin_s=rollover_margin_s, keepalive_s=keepalive_s,
        reconnect_min_s=rmin,
        reconnect_max_s=max(rmax, rmin),
        max_transcript_bytes=max_transcript_bytes, max_pending_items=max_pending_items,
        api_key=api_key,
    )
