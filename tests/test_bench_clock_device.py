"""The benchmark's timer-clocked ALSA device (bench/alsa_clock) keeps real time and gives
back its mic file exactly: the CPU figures in the README are measured on it, and would
mean nothing if it ran fast or slow."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, clean_env
from tests.pulse import device_alsa_config

REPO = Path(__file__).resolve().parent.parent


def test_clocked_device_is_paced_and_exact(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or shutil.which("arecord") is None:
        pytest.skip("needs gcc and alsa-utils (scripts/setup.sh test installs them)")
    lib = tmp_path / "libasound_module_pcm_clock.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-DPIC", "-shared", "-fPIC", "-o",
                    str(lib), str(REPO / "bench" / "alsa_clock" / "pcm_clock.c"), "-lasound"],
                   check=True, timeout=TIMEOUT)
    mic = tmp_path / "mic.raw"
    mic.write_bytes(bytes(range(256)) * 300)  # 76.8 kB: shorter than the recording, so it loops
    conf = device_alsa_config(tmp_path / "alsa", pulse=False, extra=(
        f'pcm_type.clock {{ lib "{lib}" }}\npcm.clock {{ type clock infile "{mic}" }}\n'))
    env = clean_env(ALSA_CONFIG_PATH=str(conf))
    out = tmp_path / "rec.raw"
    t0 = time.monotonic()
    subprocess.run(["arecord", "-q", "-D", "clock", "-t", "raw", "-f", "S16_LE", "-r", "48000",
                    "-c", "1", "-d", "2", str(out)], env=env, check=True, timeout=TIMEOUT)
    took = time.monotonic() - t0
    assert 1.9 < took < 4.0, took  # real time, give or take start-up
    data = out.read_bytes()
    assert len(data) == 2 * 48000 * 2
    assert data == (mic.read_bytes() * 3)[:len(data)]  # looped, sample for sample
    t0 = time.monotonic()
    subprocess.run(["aplay", "-q", "-D", "clock", "-t", "raw", "-f", "S16_LE", "-r", "24000",
                    "-c", "1", str(out)], env=env, check=True, timeout=TIMEOUT)
    assert 3.9 < time.monotonic() - t0 < 6.0  # 192 kB at 24 kHz mono is 4 s
