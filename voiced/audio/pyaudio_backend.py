"""The ``pyaudio`` backend: real ALSA devices through PortAudio.

Each device crosses into the event loop in exactly one place: the PortAudio callback
thread converts what it got and hands it over with ``loop.call_soon_threadsafe``. The
speaker's callback pulls from a jitter buffer, so playback never blocks the loop, and it
counts what each item has handed to the device as the *played* position: once handed,
audio cannot be called back and does reach the speaker (docs/architecture.md).

The parts:  ``portaudio.py`` the devices, ``pyaudio_source.py`` the mic,
``pyaudio_sink.py`` the speaker; this module is their face.
"""

from voiced.audio.portaudio import (
    _MIC_SILENCE_S,
    _QUEUE_FRAMES,
    LISTED_RATES,
    PROBE_RATES,
    DeviceInfo,
    _explain_open_error,
    _pyaudio,
    list_devices,
    open_portaudio,
    pcm_holders,
    select_device,
    supported_rates,
)
from voiced.audio.pyaudio_sink import PyAudioSink
from voiced.audio.pyaudio_source import PyAudioSource

__all__ = [
    "LISTED_RATES", "PROBE_RATES", "DeviceInfo", "PyAudioSink", "PyAudioSource",
    "_MIC_SILENCE_S", "_QUEUE_FRAMES", "_explain_open_error", "_pyaudio", "list_devices",
    "open_portaudio", "pcm_holders", "select_device", "supported_rates",
]
