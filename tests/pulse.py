"""A throwaway PulseAudio server with null sinks: real, clocked audio devices for PortAudio.

PortAudio reaches it through ALSA's ``pulse`` plugin (device ``pulse``). The sinks use
``norewinds=1`` so what a stream plays reaches ``<sink>.monitor`` bit-exact (see
shared/docs/test-harness.md §2b); the default source is the monitor of the default sink,
so a test hears exactly what the speaker played. Unloading a sink's module is the
machine's version of pulling out a USB sound card: streams on it fail.

Processes using the server see ALSA configured as on a device: only the pulse plugin's
files, not this machine's whole libasound2-plugins set (a52, jack, oss, speex, upmix...),
which PortAudio would open, one by one, every time it lists devices.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT, clean_env

SINK_ARGS = "format=s16le rate=24000 channels=1 norewinds=1"
# The server's real-time priority: its sinks' threads ask for SCHED_RR 5 themselves (and
# get it as root); the main thread, which moves every client's audio between the socket
# and the sinks (no shm here), is put there too. Below the test's room (FIFO 10, see
# tests/room_process.py), above everything not real-time, as a sound card's interrupts
# are: a starved main thread let the room's playback run dry on a loaded machine.
SERVER_RT_PRIORITY = 5


class Pulse:
    """A running PulseAudio daemon in ``root``; ``machine_alsa`` keeps this machine's ALSA
    configuration (every plugin) for its clients instead of the device-like one."""

    def __init__(self, root: Path, *, machine_alsa: bool = False) -> None:
        self.root = root
        self.home = root / "home"  # no .asoundrc: ALSA's default config routes to pulse
        self.home.mkdir(parents=True)
        self.alsa_config = None if machine_alsa else device_alsa_config(root)
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o700)
        self.socket = root / "native"
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheduling = ""  # the server's main thread's, once started

    def env(self, *, machine_alsa: bool = False, **extra: str) -> dict[str, str]:
        """Environment for a process that should use this server; ``machine_alsa`` gives
        it this machine's ALSA configuration even where the server's clients have not."""
        if self.alsa_config is not None and not machine_alsa:
            extra = {"ALSA_CONFIG_PATH": str(self.alsa_config), **extra}
        return clean_env(HOME=str(self.home), XDG_RUNTIME_DIR=str(self.run_dir),
                         PULSE_SERVER=f"unix:{self.socket}", **extra)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n",
             "--disable-shm=yes", "--log-target=stderr",
             f"--load=module-null-sink sink_name=null24 {SINK_ARGS}",
             f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=open(  # noqa: SIM115
                self.root / "pulse.log", "wb"))
        deadline = time.monotonic() + TIMEOUT
        while self.pactl("info", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()  # not left running for nobody (it may start after all)
                raise RuntimeError("pulseaudio did not start: "
                                   + (self.root / "pulse.log").read_text()[-2000:])
            time.sleep(0.05)
        self.scheduling = self._realtime()

    def _realtime(self) -> str:
        """Put the server's main thread at SCHED_RR ``SERVER_RT_PRIORITY`` where it may
        be (root with chrt); return what it got (``chrt -p``'s words), "" where it may
        not. Threads it starts later inherit it (its sinks' own threads set theirs)."""
        assert self.proc is not None
        if os.geteuid() != 0 or shutil.which("chrt") is None:
            return ""
        pid = str(self.proc.pid)
        if subprocess.run(["chrt", "-r", "-p", str(SERVER_RT_PRIORITY), pid],
                          capture_output=True, timeout=TIMEOUT).returncode != 0:
            return ""  # root without CAP_SYS_NICE (a container): as it was before
        return subprocess.run(["chrt", "-p", pid], capture_output=True, text=True,
                              timeout=TIMEOUT).stdout

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["pactl", *args], env=self.env(), capture_output=True,
                              text=True, timeout=TIMEOUT, check=check)

    def add_sink(self, name: str, rate: int) -> None:
        """One more clocked mono s16 null sink (``<name>.monitor`` is its mic)."""
        self.pactl("load-module", "module-null-sink", f"sink_name={name}", "format=s16le",
                   f"rate={rate}", "channels=1", "norewinds=1")

    def unplug(self) -> None:
        """Remove the null sink (and so its monitor): every stream on it fails."""
        self.pactl("unload-module", "module-null-sink")

    def plug(self) -> None:
        """Bring the sink back as the default sink and (monitor) source."""
        self.add_sink("null24", 24000)
        self.pactl("set-default-sink", "null24")
        self.pactl("set-default-source", "null24.monitor")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)


@contextmanager
def running_pulse(tmp_path: Path) -> Iterator[Pulse]:
    """A fresh PulseAudio server (tests unplug its sink, so one per test)."""
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("pulseaudio is not installed (scripts/setup.sh test installs it)")
    server = Pulse(tmp_path / "pulse")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def device_alsa_config(tmp: Path, *, pulse: bool = True, extra: str = "") -> Path:
    """alsa.conf as on a device without the libasound2-plugins package (a52, jack, oss,
    speex, upmix... not configured): ``pulse`` keeps the pulse plugin's files (the
    stand-in card), ``extra`` is one more configuration file's text."""
    confd = tmp / "alsa-conf.d"
    confd.mkdir(parents=True)
    for name in ("50-pulseaudio.conf", "99-pulse.conf") if pulse else ():
        src = Path("/etc/alsa/conf.d") / name
        if src.exists():
            (confd / name).symlink_to(src.resolve())
    if extra:
        (confd / "50-extra.conf").write_text(extra)
    text = Path("/usr/share/alsa/alsa.conf").read_text()
    for d in ('"/var/lib/alsa/conf.d"', '"/usr/etc/alsa/conf.d"', '"/etc/alsa/conf.d"'):
        text = text.replace(d, f'"{confd}"' if d == '"/etc/alsa/conf.d"' else "")
    out = tmp / "alsa.conf"
    out.write_text(text)
    return out
