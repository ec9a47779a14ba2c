"""voiced: a voice-assistant appliance daemon for the OpenAI Realtime API (GA dialect)."""

__version__ = "0.1.0"
