"""`voiced relay`: the server half in front of the Realtime API (keys stay off devices).

A forwarder with a ledger, not a second conversation core: it authenticates devices,
configures the upstream session from the agent, filters what a device may change,
forwards every other event untouched, and writes the transcripts it sees to PostgreSQL
(or a local spool while the database is away) before the device hears of them.

Modules: ``config`` (relay.yaml), ``auth`` (tokens, rate limits), ``ledger`` (pure: what
each event means for the session and the rows), ``store`` (PostgreSQL and the spool),
``refusals`` (the HTTP refusals and checks the handshake and the page share), ``server``
(handshake and the per-connection bridge), ``web`` (the browser client over HTTP),
``cli`` (the commands).
"""
