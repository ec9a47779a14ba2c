"""GPT-Live, the second backend: its wire types, its pure conversation core and its parts.

``realtime.api: live`` wires it into the daemon (docs/architecture.md, "GPT-Live
backend"); :mod:`voiced.live.core` composes the parts and is what the supervisor builds.
"""
