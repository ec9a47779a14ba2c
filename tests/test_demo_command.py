"""`voiced demo` as a new user runs it: a whole exchange, printed."""

from __future__ import annotations

import json
import re
import subprocess
import wave
from pathlib import Path

import numpy as np

from tests.conftest import clean_env, voiced_cmd


def test_demo_prints_a_whole_exchange_and_writes_the_reply(tmp_path: Path) -> None:
    # bounded by the timeout, never timed: how fast it runs is the machine's business
    p = subprocess.run(voiced_cmd("demo", "--out", str(tmp_path)), env=clean_env(),
                       capture_output=True, text=True, timeout=100, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    states = re.findall(r"^\s+\[(\w+)\]", out, re.M)
    assert states[:2] == ["connecting", "ready"]
    assert states.index("listening") < states.index("thinking") < states.index("speaking")
    assert "(pressing the button)" in out  # a mock-pin press, not a control command
    you = re.search(r"^\s+you: (.+)$", out, re.M)
    assistant = re.search(r"^assistant: (.+)$", out, re.M)
    assert you and assistant
    assert assistant.group(1).startswith("You said")
    wav_path = Path(re.search(r"the reply audio is in (\S+)", out).group(1))  # type: ignore[union-attr]
    with wave.open(str(wav_path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.abs(pcm).max() > 1000  # a spoken reply, not silence
    records = [json.loads(line) for line in
               Path(re.search(r"the transcripts are in (\S+)", out).group(1))  # type: ignore[union-attr]
               .read_text().splitlines()]
    assert [r["role"] for r in records] == ["user", "assistant"]
    assert records[0]["text"] == you.group(1).strip()
