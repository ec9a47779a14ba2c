"""GPT-Live, the second backend: its wire types, its pure conversation core, its helpers.

Nothing here is wired into the daemon yet (docs/architecture.md, "GPT-Live backend"):
``realtime.api: live`` comes with the supervisor's wiring on the split tree.
"""
