"""Transcript sinks behind the outbox: jsonl, webhook, supabase (PostgREST), postgres."""

from __future__ import annotations

from typing import Any

from voiced.config import TranscriptSettings
from voiced.errors import ConfigError
from voiced.outbox import Sink


def build_sink(settings: TranscriptSettings, *, device_id: str, agent_id: str | None
               ) -> Sink | None:
    """The sink ``transcripts.sink`` names, or None for ``none``."""
    kind = settings.sink
    if kind == "none":
        return None
    if kind == "jsonl":
        from voiced.sinks.jsonl import JsonlSink

        assert settings.jsonl_path is not None  # validated
        return JsonlSink(settings.jsonl_path)
    if kind == "webhook":
        from voiced.sinks.http import WebhookSink

        assert settings.webhook_url is not None
        return WebhookSink(settings.webhook_url, token=settings.webhook_token,
                           timeout_s=settings.timeout_s)
    if kind == "supabase":
        from voiced.sinks.http import SupabaseSink

        assert settings.supabase_url is not None and settings.supabase_key is not None
        return SupabaseSink(settings.supabase_url, key=settings.supabase_key,
                            timeout_s=settings.timeout_s, device_id=device_id,
                            agent_id=agent_id)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        # plain psycopg (voiced[postgres]) fails to import without the system libpq too
        raise ConfigError([("transcripts.sink", "the postgres sink needs psycopg 3 and "
                            "libpq: sudo apt install libpq5, and pip install "
                            "'psycopg>=3.1' in the venv")]) from None
    from voiced.sinks.postgres import PostgresSink

    assert settings.postgres_dsn is not None
    return PostgresSink(settings.postgres_dsn, timeout_s=settings.timeout_s,
                        device_id=device_id, agent_id=agent_id)


def message_row(record: dict[str, Any]) -> dict[str, Any]:
    """A ``chat_messages_v2`` row for a record (the seed's columns)."""
    return {"id": record["id"], "conversation_id": record["conversation_id"],
            "role": record["role"], "content": record["text"],
            "metadata": record["metadata"], "created_at": record["created_at"]}
