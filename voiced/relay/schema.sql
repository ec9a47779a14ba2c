-- The relay's own tables, beside the seed's conversations and chat_messages_v2
-- (voiced/sinks/schema.sql, which the relay applies first). `voiced relay` applies both
-- at start, under an advisory lock so that two relays starting together do not race.
-- Safe to run again.

-- One row per device: its token's SHA-256 (never the token), revoked_at once revoked.
create table if not exists relay_devices (
    name        text primary key,
    token_hash  bytea not null unique,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

-- What ?agent_id= selects. The relay upserts the agents of its relay.yaml at start;
-- rows added here by other means (a web app) are served too, validated like the YAML.
create table if not exists agents (
    id              text primary key,
    instructions    text not null,
    voice           text not null,
    voices          jsonb not null default '[]'::jsonb,
    model           text not null,
    transcription   jsonb not null default '{}'::jsonb,
    turn_detection  jsonb,
    tools           jsonb not null default '[]'::jsonb,
    device_may_set  jsonb not null default '["voice", "turn_detection"]'::jsonb,
    updated_at      timestamptz not null default now()
);

-- conversations.device_id holds the relay's device name: "does this conversation
-- belong to this device" is one indexed lookup
create index if not exists conversations_device_idx on conversations (device_id);
