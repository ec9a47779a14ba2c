"""Opus between device and relay: bytes, CPU and delay against today's base64 PCM16.

Run: ``.venv/bin/python bench/opus_bench.py [--seconds 60]``. The input is the reply the
tests use (espeak-ng, 24 kHz), in the daemon's 20 ms frames. Printed beside each other,
from the same run:

- bytes per second on the link: PCM16 itself, today's ``input_audio_buffer.append``
  events (base64 PCM16 in JSON, as ``wire.encode`` sends them, event ids included), and
  Opus packets at a few bitrates (raw, and as the same JSON event would carry them in
  base64, an upper bound for a framing the relay protocol has not fixed yet);
- CPU per second of audio: encoding (the device) and decoding (the relay, per stream),
  beside the baseline of what the device does per frame today (base64 + JSON);
- the delay the codec adds (its lookahead; framing is the same 20 ms as today's);
- whether the simulator's recogniser (pocketsphinx) still hears the bundled question.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.aec_bench import PI, sysbench  # noqa: E402
from tests.room import REPLY_TEXT, espeak  # noqa: E402
from tests.speech import question_24k  # noqa: E402
from voiced import wire  # noqa: E402
from voiced.audio.opus import OpusDecoder, OpusEncoder, version  # noqa: E402
from voiced.wire import SAMPLE_RATE  # noqa: E402

FRAME = 960  # 20 ms of PCM16


def frames(seconds: float) -> list[bytes]:
    one = espeak(REPLY_TEXT)
    x = np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / len(one))))[:int(seconds * SAMPLE_RATE)]
    pcm = x.astype("<i2").tobytes()
    return [pcm[i:i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def json_event(i: int, payload: bytes) -> str:
    return wire.encode(wire.audio_append(f"evt_{i:08d}", payload))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    fs = frames(args.seconds)
    secs = len(fs) * 0.02
    print(f"{version()}; {secs:.0f} s of speech in 20 ms frames\n")

    t = time.process_time()
    today = [json_event(i, f) for i, f in enumerate(fs)]
    json_cpu = time.process_time() - t
    t = time.process_time()
    for f in fs:
        base64.b64encode(f)
    b64_cpu = time.process_time() - t
    rows = [("PCM16 itself", len(fs) * FRAME / secs, None),
            ("today: input_audio_buffer.append, base64 PCM16 in JSON",
             sum(len(e.encode()) for e in today) / secs, None)]
    cpu = []
    for bitrate, complexity in ((16_000, 5), (24_000, 5), (32_000, 5), (24_000, 10)):
        enc = OpusEncoder(bitrate=bitrate, complexity=complexity)
        t = time.process_time()
        packets = [enc.encode(f) for f in fs]
        enc_cpu = time.process_time() - t
        dec = OpusDecoder(trim=enc.lookahead)
        t = time.process_time()
        for p in packets:
            dec.decode(p)
        dec_cpu = time.process_time() - t
        label = f"Opus {bitrate // 1000} kbit/s, complexity {complexity}"
        raw = sum(map(len, packets)) / secs
        wrapped = sum(len(json.dumps({"type": "input_audio_buffer.append",
                                      "event_id": f"evt_{i:08d}",
                                      "audio": base64.b64encode(p).decode()},
                                     separators=(",", ":")).encode())
                      for i, p in enumerate(packets)) / secs
        rows.append((label, raw, wrapped))
        cpu.append((label, enc_cpu / secs * 1e6, dec_cpu / secs * 1e6, enc.lookahead))
    pcm_rate = rows[0][1]
    json_rate = rows[1][1]
    print("bytes per second, each way:")
    for label, rate, wrapped in rows:
        extra = "" if wrapped is None else (
            f"   in the same JSON event: {wrapped:7.0f} ({wrapped / json_rate:.2f}x today)")
        print(f"  {label:<56} {rate:7.0f}  ({rate / pcm_rate:.3f}x PCM16, "
              f"{rate / json_rate:.3f}x today){extra}")
    print("\nCPU per second of audio (process time):")
    print(f"  baseline today, device: base64 + JSON per frame            "
          f"{json_cpu / secs * 1e6:6.0f} us (base64 alone {b64_cpu / secs * 1e6:.0f} us)")
    for label, e, d, look in cpu:
        print(f"  {label:<36} encode (device) {e:6.0f} us, decode (relay, per stream) "
              f"{d:5.0f} us; codec delay {look} samples = {look / 24:.1f} ms")
    mine = sysbench()
    if mine is not None:
        ratio = mine / PI["sysbench"]
        print(f"  Pi Zero 2 W ESTIMATE ({ratio:.1f}x slower per core by sysbench): encoding "
              f"at complexity 5 about {cpu[1][1] * ratio / 1e4:.1f} % of one of its cores")
    from voiced.sim.voice import transcribe

    q = question_24k()
    before, real = transcribe(q.tobytes())
    print(f"\npocketsphinx on the bundled question: {before!r}" + ("" if real else
                                                                   " (not installed)"))
    for bitrate in (12_000, 16_000, 24_000):
        enc = OpusEncoder(bitrate=bitrate)
        dec = OpusDecoder(trim=enc.lookahead)
        pcm = q.tobytes()
        whole = len(pcm) // FRAME * FRAME
        out = [dec.decode(enc.encode(pcm[i:i + FRAME])) for i in range(0, whole, FRAME)]
        out += [dec.decode(p) for p in enc.finish(pcm[whole:])]
        after, _ = transcribe(b"".join(out)[:len(pcm)])
        print(f"  after Opus {bitrate // 1000} kbit/s: {after!r} "
              f"({'the same words' if after == before else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
