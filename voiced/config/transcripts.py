"""The ``transcripts:`` section's validator."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from voiced import guard
from voiced.config.secrets import _credential, _missing_credential, credential_source
from voiced.config.sections import _path, _Section, _url
from voiced.config.settings import SINKS, TranscriptSettings


def _transcripts(sec: _Section, base: Path, environ: Mapping[str, str]) -> TranscriptSettings:
    d = TranscriptSettings()
    sink = sec.choice("sink", d.sink, SINKS)
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
        sink=sink, outbox_dir=outbox, jsonl_path=jsonl_path,
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
