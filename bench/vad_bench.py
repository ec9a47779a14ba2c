"""Uplink saved by on-device turn detection (``client_vad``) against server VAD.

Run: ``.venv/bin/python bench/vad_bench.py [--minutes 2]``. The same input (the bundled
question, spoken again and again between pauses of faint room noise, 2-8 s) is fed with
the mic switched on to the real session core in both modes, and every client event it
emits is encoded as it would go on the socket. Prints the bytes and seconds of audio
sent, the commits, and the VAD's CPU cost per second of audio.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.speech import speech_with_pauses  # noqa: E402
from voiced import wire  # noqa: E402
from voiced.audio.vad import SpeechDetector  # noqa: E402
from voiced.core.conversation import Conversation  # noqa: E402
from voiced.core.effects import Send  # noqa: E402
from voiced.core.policy import make_policy  # noqa: E402
from voiced.core.speech_gate import ClientVad  # noqa: E402

FRAME_BYTES = wire.SAMPLE_RATE // 50 * 2  # 20 ms


def run(pcm: bytes, mode: str) -> dict[str, float]:
    vad = ClientVad(pre_roll_ms=300, tail_ms=300, silence_ms=700, min_speech_ms=60)
    policy = make_policy(
        model="gpt-realtime-2.1", voice="marin", instructions="", turn_type=mode,
        threshold=0.5, prefix_padding_ms=300, silence_duration_ms=700, eagerness="auto",
        transcription={"model": "gpt-4o-mini-transcribe"}, half_duplex=True,
        echo_tail_ms=300, push_to_talk=False, send_model=True,
        client_vad=vad if mode == "client_vad" else None)
    ids = itertools.count()
    c = Conversation(policy, conversation_id="bench", new_id=lambda: str(next(ids)))
    c.on_devices_ready()
    c.on_connection_up()
    c.on_server_event(wire.SessionCreated("s", None), 0.0)
    c.on_server_event(wire.SessionUpdated(session={}), 0.0)
    c.take_effects()
    c.on_press(0.0)
    c.take_effects()
    det = SpeechDetector(2) if mode == "client_vad" else None
    sent = commits = 0
    vad_cpu = 0.0
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        frame = pcm[i:i + FRAME_BYTES]
        speech = False
        if det is not None:
            t = time.process_time()
            speech = det.is_speech(frame)
            vad_cpu += time.process_time() - t
        c.on_audio_captured(frame, i / FRAME_BYTES * 0.02, speech)
        for eff in c.take_effects():
            if isinstance(eff, Send):
                sent += len(wire.encode(eff.event).encode())
                commits += eff.event["type"] == "input_audio_buffer.commit"
    return {"bytes": sent, "audio_s": c.counters.appended_samples / wire.SAMPLE_RATE,
            "commits": commits, "vad_cpu_s": vad_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    import random

    rng = random.Random(args.seed)
    pauses: list[float] = []
    while sum(pauses) + 2.4 * len(pauses) < args.minutes * 60:
        pauses.append(rng.uniform(2, 8))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.wav"
        spans = speech_with_pauses(path, pauses)
        with wave.open(str(path)) as w:
            pcm = w.readframes(w.getnframes())
    total_s = len(pcm) / 2 / wire.SAMPLE_RATE
    speech_s = sum(e - s for s, e in spans)
    server = run(pcm, "server_vad")
    client = run(pcm, "client_vad")
    print(f"input: {total_s:.0f} s, {len(spans)} utterances, {speech_s:.0f} s of speech")
    print(f"{'mode':<12} {'uplink bytes':>14} {'audio sent':>11} {'commits':>8}")
    for name, r in (("server_vad", server), ("client_vad", client)):
        print(f"{name:<12} {r['bytes']:>14,.0f} {r['audio_s']:>9.1f} s {r['commits']:>8.0f}")
    saved = 1 - client["bytes"] / server["bytes"]
    print(f"uplink saved by client_vad: {saved:.0%} "
          f"({(server['bytes'] - client['bytes']) / total_s * 3600 / 1e6:.1f} MB per hour "
          f"of open mic)")
    print(f"VAD cost: {client['vad_cpu_s'] / total_s * 1000:.2f} ms CPU per second of audio "
          f"({client['vad_cpu_s'] / total_s:.2%} of one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
