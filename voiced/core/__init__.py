"""The conversation core: pure, sans-I/O, composed of one module per idea.

``effects`` (what the core asks for, and the state), ``policy`` (what the config decides),
``conversation`` (the state machine that composes the parts), ``replies`` (the assistant's
items, playback, truncation, records), ``uplink`` (the user's audio, backlog, commits),
``speech_gate`` (client VAD turn taking), ``calls`` (tools), ``rollover`` (the standby
session), ``history`` (re-seeding), ``facts``/``emitter``/``text`` (what the parts share).
Nothing here imports an adapter, asyncio, a clock or the file system.
"""
