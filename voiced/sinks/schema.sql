-- The tables the supabase and postgres sinks write to (the seed web app's schema).
-- Apply once: psql "$DSN" -f schema.sql   (or paste into the Supabase SQL editor)
-- Safe to run again.

create table if not exists conversations (
    id          uuid primary key,
    agent_id    text,
    device_id   text,
    created_at  timestamptz not null default now()
);

create table if not exists chat_messages_v2 (
    id               uuid primary key,
    conversation_id  uuid not null references conversations (id) on delete cascade,
    role             text not null check (role in ('user', 'assistant')),
    content          text not null,
    metadata         jsonb not null default '{}'::jsonb,
    created_at       timestamptz not null default now()
);

create index if not exists chat_messages_v2_conversation_idx
    on chat_messages_v2 (conversation_id, created_at);

-- Row-level security (Supabase): the device writes with a key that may insert only.
-- With the service_role key RLS is bypassed; with an anon/device key, enable RLS and
-- allow inserts (and nothing else) for that role:
--   alter table conversations enable row level security;
--   alter table chat_messages_v2 enable row level security;
--   create policy device_insert on conversations for insert to anon with check (true);
--   create policy device_insert on chat_messages_v2 for insert to anon with check (true);
-- Reads stay with your app's authenticated users, e.g.
--   create policy owner_read on chat_messages_v2 for select to authenticated using (...);
