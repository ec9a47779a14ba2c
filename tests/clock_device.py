"""The timer-clocked ALSA device (bench/alsa_clock/pcm_clock.c): a paced sound card that
costs its client what a card costs. The benchmark measures CPU on it; a test holds it to
real time."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import TIMEOUT, clean_env
from tests.pulse import device_alsa_config

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "alsa_clock" / "pcm_clock.c"


def clock_device_env(tmp: Path, infile: Path) -> dict[str, str]:
    """Build the device in ``tmp``; the environment in which ALSA (and PortAudio) see it
    as ``clock``, its mic looping the raw PCM in ``infile``.

    Raises:
        subprocess.CalledProcessError: it does not build (gcc, libasound2-dev); ``stderr``
            has the compiler's words.
    """
    lib = tmp / "libasound_module_pcm_clock.so"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-DPIC", "-shared", "-fPIC", "-o",
                    str(lib), str(SOURCE), "-lasound"], check=True, capture_output=True,
                   text=True, timeout=TIMEOUT)
    conf = device_alsa_config(tmp / "clock-alsa", pulse=False, extra=(
        f'pcm_type.clock {{ lib "{lib}" }}\npcm.clock {{ type clock infile "{infile}" }}\n'))
    return clean_env(ALSA_CONFIG_PATH=str(conf))
