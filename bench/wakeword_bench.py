"""What wake-word listening costs: CPU per second of audio and memory, beside baselines.

Run: ``.venv/bin/python bench/wakeword_bench.py [--seconds 60]`` (needs
``voiced[wake]``). The detector is fed 24 kHz PCM in the daemon's 20 ms frames (room
noise with speech in it, so the models work as they would while listening). Baselines in
the same run: a plain copy of each frame, and the detector's own plumbing (resampling to
16 kHz, 10 ms steps, cutoffs) with the models replaced by a constant. Memory is measured
in fresh processes: the import and the models (TFLite runtime, numpy) on top of what
the daemon already has. The Pi Zero 2 W figure is an estimate (bench/aec_bench.py: a
sysbench ratio against a published Cortex-A53 figure).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.aec_bench import PI, in_child, sysbench  # noqa: E402
from tests.room import REPLY_TEXT, espeak  # noqa: E402
from voiced.audio.wakeword import (  # noqa: E402
    BUILTIN_MODELS,
    MicroWakeWordDetector,
    StreamingDetector,
)
from voiced.wire import SAMPLE_RATE  # noqa: E402

FRAME = SAMPLE_RATE // 50 * 2


class Plumbing(StreamingDetector):
    """The detector without models: every step scores 0."""

    def __init__(self) -> None:
        super().__init__(["none"], {"none": 1.0}, {"none": ""})

    def _probabilities(self, step: bytes) -> Iterator[tuple[str, float]]:
        yield "none", 0.0


def listening(seconds: float) -> bytes:
    """Room noise with the reply spoken now and then: what a listening mic hears."""
    rng = np.random.default_rng(9)
    n = int(seconds * SAMPLE_RATE)
    x = rng.standard_normal(n) * 60
    speech = espeak(REPLY_TEXT).astype(np.float64) * 0.3
    for start in range(0, n - len(speech), 3 * len(speech)):
        x[start:start + len(speech)] += speech
    out: bytes = np.clip(x, -32768, 32767).astype("<i2").tobytes()
    return out


def cpu_per_s(feed: object, pcm: bytes) -> float:
    t = time.process_time()
    for i in range(0, len(pcm), FRAME):
        feed(pcm[i:i + FRAME])  # type: ignore[operator]
    return (time.process_time() - t) / (len(pcm) / 2 / SAMPLE_RATE) * 1e6


MEMORY = """
import voiced.wire, voiced.audio.libsoxr  # the daemon has these anyway
base = rss()
from voiced.audio.wakeword import MicroWakeWordDetector
det = MicroWakeWordDetector({models!r})
for i in range(100):
    det.feed(bytes(960))
print(base, rss())
"""


def memory_mb(models: tuple[str, ...]) -> float:
    out = in_child(MEMORY.format(models=models)).stdout.split()
    return (int(out[1]) - int(out[0])) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    pcm = listening(args.seconds)
    rows = {"baseline: a plain copy of each 20 ms frame": cpu_per_s(bytes, pcm),
            "baseline: the plumbing (24 -> 16 kHz, 10 ms steps), no model":
                cpu_per_s(Plumbing().feed, pcm)}
    for models in (("okay_nabu",), BUILTIN_MODELS):
        det = MicroWakeWordDetector(models)
        rows[f"MicroWakeWordDetector({', '.join(models)})"] = cpu_per_s(det.feed, pcm)
    print(f"CPU per second of audio ({args.seconds:.0f} s, 20 ms frames at 24 kHz):")
    for label, us in rows.items():
        print(f"  {label:<72} {us:7.0f} us  ({us / 1e4:.2f} % of a core)")
    print(f"\nMemory added to a process that has voiced's audio modules: "
          f"{memory_mb(('okay_nabu',)):.1f} MB with one model, "
          f"{memory_mb(BUILTIN_MODELS):.1f} MB with four (numpy and the TFLite runtime)")
    mine = sysbench()
    one = rows["MicroWakeWordDetector(okay_nabu)"]
    if mine is not None:
        ratio = mine / PI["sysbench"]
        print(f"\nPi Zero 2 W ESTIMATE ({ratio:.1f}x slower per core by sysbench): one model "
              f"about {one * ratio / 1e4:.1f} % of one of its four cores")


if __name__ == "__main__":
    main()
