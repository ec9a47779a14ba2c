"""`voiced sim`: a local Realtime-compatible server (GA dialect) for demos and tests."""
