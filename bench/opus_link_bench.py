"""Opus between device and relay against today's PCM16, in one run.

A real relay (in this process) in front of `voiced sim` (its pocketsphinx recogniser
hears the words), a real PostgreSQL; one device connection in PCM16 (the baseline) and
one offering Opus speak the bundled question. Printed: bytes per second each way on the
WebSocket (payloads plus frame headers), the latency the codec adds, the device's encode
CPU per second of audio, the relay's decode and encode CPU per stream, and the words the
recogniser heard each way.

    .venv/bin/python bench/opus_link_bench.py
"""

from __future__ import annotations

import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.backends import postgres  # noqa: E402
from tests.relay_rig import QUESTION, SILENCE_1S, Client, relay_in_process  # noqa: E402
from voiced.audio.opus_stream import (  # noqa: E402
    FRAME,
    HEADER,
    AudioOffer,
    StreamDecoder,
    StreamEncoder,
    parse_header,
)
from voiced.relay.codec import RelayCodec  # noqa: E402
from voiced.relay.ledger import encode  # noqa: E402
from voiced.sim.server import SimOptions, SimServer  # noqa: E402

DELTA = "response.output_audio.delta"
SPEECH = QUESTION + SILENCE_1S


def ws_overhead(n: int, masked: bool) -> int:
    """Bytes of a WebSocket frame header for an ``n``-byte payload."""
    return 2 + (2 if n >= 126 else 0) + (6 if n >= 65536 else 0) + (4 if masked else 0)


async def exchange(relay: object, token: str, opus: bool,
                   first: int = FRAME) -> dict[str, float | str]:
    enc = StreamEncoder()
    c = await Client.open(relay.url, token,  # type: ignore[attr-defined]
                          headers={HEADER: AudioOffer(enc.pre_skip).header()} if opus
                          else None)
    assert c.ws.response is not None
    answer = parse_header(c.ws.response.headers.get(HEADER))
    assert (answer is not None) == opus
    await c.wait_for("session.created")
    up = 0
    cuts = [0, *range(first * 2, len(SPEECH), FRAME * 2), len(SPEECH)]
    for i, j in zip(cuts, cuts[1:], strict=False):
        pcm = SPEECH[i:j]
        if opus:
            for p in enc.push(pcm):
                await c.ws.send(p)
                up += len(p) + ws_overhead(len(p), True)
        else:
            text = encode({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(pcm).decode()})
            await c.ws.send(text)
            up += len(text) + ws_overhead(len(text), True)
    heard = (await c.wait_for("conversation.item.input_audio_transcription.completed")
             )["transcript"]
    await c.wait_for("response.done")
    down = reply = 0
    dec = StreamDecoder(answer.pre_skip) if answer else None
    for e in c.of(DELTA):
        n = len(encode(e))
        down += n + ws_overhead(n, False)
        pcm = base64.b64decode(e["delta"])
        reply += len(dec.feed(pcm) if dec else pcm)
    await c.close()
    return {"heard": heard, "up_Bps": up / (len(SPEECH) / 48_000),
            "down_Bps": down / (reply / 48_000), "reply_s": reply / 48_000}


def cpu() -> dict[str, float]:
    """CPU seconds per second of audio: device encode/decode, relay decode/encode."""
    seconds = len(SPEECH) / 48_000
    rounds = 5
    out: dict[str, float] = {}
    enc = StreamEncoder()
    t = time.process_time()
    payloads: list[bytes] = []
    for _ in range(rounds):
        payloads = []
        for i in range(0, len(SPEECH), FRAME * 2):
            payloads += enc.push(SPEECH[i:i + FRAME * 2])
        enc.reset()
    out["device encode"] = (time.process_time() - t) / rounds / seconds
    offer = AudioOffer(enc.pre_skip)
    t = time.process_time()
    for _ in range(rounds):
        codec = RelayCodec(offer)
        for p in payloads:
            codec.from_device(p)
    out["relay decode (mic → PCM16 append)"] = (time.process_time() - t) / rounds / seconds
    deltas = [{"type": DELTA, "event_id": f"e{i}", "response_id": "r", "item_id": "i",
               "output_index": 0, "content_index": 0,
               "delta": base64.b64encode(SPEECH[i:i + 4800]).decode()}
              for i in range(0, len(SPEECH), 4800)]  # 100 ms deltas
    t = time.process_time()
    sent: list[str] = []
    for _ in range(rounds):
        codec = RelayCodec(offer)
        sent = []
        for d in deltas:
            sent += codec.to_device(DELTA, "", d)
        sent += codec.to_device("response.output_audio.done", "{}", {})
    out["relay encode (reply → Opus deltas)"] = (time.process_time() - t) / rounds / seconds
    t = time.process_time()
    from voiced.opus_link import LinkCodec
    for _ in range(rounds):
        link = LinkCodec(offer)
        for s in sent[:-1]:
            link.incoming(s)
    out["device decode (Opus deltas → PCM16)"] = (time.process_time() - t) / rounds / seconds
    return out


async def main() -> None:
    with postgres() as dsn, tempfile.TemporaryDirectory() as tmp:
        async with SimServer(SimOptions(pace=8)) as sim, \
                relay_in_process(Path(tmp), sim.url, dsn) as relay:
            token = await relay.store.add_device("bench")
            # warm pocketsphinx up (it adapts to the first utterance), then alternate
            await exchange(relay, token, False)
            runs = [await exchange(relay, token, opus) for opus in (False, True, False, True)]
            # PCM16 cut where the relay's decoder cuts the Opus stream (its first append is
            # 480 - 156 samples): the recogniser's words follow the cut, not the codec
            shifted = await exchange(relay, token, False, FRAME - StreamEncoder().pre_skip)
    pcm, opus = runs[0], runs[1]
    print(f"speech {len(SPEECH) / 48_000:.1f} s up, reply {pcm['reply_s']:.1f} s down "
          "(WebSocket payloads + frame headers)")
    print(f"{'':34} {'PCM16 JSON':>12} {'Opus':>10} {'ratio':>7}")
    for key, label in (("up_Bps", "device → relay, bytes/s"),
                       ("down_Bps", "relay → device, bytes/s")):
        print(f"{label:34} {pcm[key]:12.0f} {opus[key]:10.0f} "
              f"{float(opus[key]) / float(pcm[key]):7.3f}")
    pre_skip = StreamEncoder().pre_skip
    print(f"added latency: codec delay {pre_skip / 24:.1f} ms each way; framing: none up "
          "(20 ms microphone frames), up to 20 ms down (whole frames of each delta, the "
          "rest with the next or the END)")
    for name, v in cpu().items():
        print(f"CPU {name:38} {v * 1000:6.2f} ms per second of audio ({v * 100:.2f} %)")
    for i, r in enumerate(runs):
        print(f"recogniser, {'Opus ' if i % 2 else 'PCM16'} run {i // 2 + 1}: {r['heard']!r}")
    print(f"recogniser, PCM16 cut as the Opus stream: {shifted['heard']!r}")


if __name__ == "__main__":
    asyncio.run(main())
