"""The new audio building blocks run where the unit runs them: MemoryDenyWriteExecute=yes
(the kernel refuses writable+executable memory). ctypes calls into libspeexdsp and
libopus need none; the wake-word models' TFLite runtime is checked too, since a runtime
that generated code at run time would be killed by the unit's setting."""

from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO, clean_env
from tests.test_appliance import under_mdwe

SCRIPT = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from voiced.audio.aec import EchoCanceller
from voiced.audio.earcons import render
from voiced.audio.opus import OpusDecoder, OpusEncoder
aec = EchoCanceller()
beep = render("listening_started")[:960 * 10]
for i in range(0, len(beep), 960):
    aec.played(beep[i:i + 960], i // 2)
    aec.process(beep[i:i + 960], i // 2 + 480)
enc = OpusEncoder()
dec = OpusDecoder(trim=enc.lookahead)
assert len(dec.decode(enc.encode(beep[:960]))) == 960 - 2 * enc.lookahead
print("aec, earcons, opus: ok")
if sys.argv[1] == "wake":
    from voiced.audio.wakeword import BUILTIN_MODELS, MicroWakeWordDetector
    det = MicroWakeWordDetector(BUILTIN_MODELS)
    for _ in range(100):
        det.feed(bytes(960))
    print("wake word: ok")
"""


def test_aec_opus_earcons_and_wake_word_run_without_writable_executable_memory() -> None:
    wake = importlib.util.find_spec("pymicro_wakeword") is not None
    p = under_mdwe([sys.executable, "-c", SCRIPT, "wake" if wake else "-"], env=clean_env())
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "aec, earcons, opus: ok" in p.stdout
    assert ("wake word: ok" in p.stdout) == wake
