"""The PyAudio backend on a real PortAudio stack: ALSA's file plugin over a null device.

ALSA reads its configuration once per process, so each test runs PortAudio in a child
process whose HOME holds an ``.asoundrc`` naming a device ``usbmic``: capture reads a raw
file, playback writes one (exact bytes, not paced; see shared/docs/test-harness.md §2a).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soxr
import yaml

from tests.conftest import TIMEOUT, clean_env, voiced_cmd
from voiced.audio.convert import QUALITY


def alsa_home(tmp_path: Path, rate_in_s: float = 4.0, in_pcm: bytes | None = None) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    infile = tmp_path / "in.raw"
    # NOTE: in.raw must exist before PortAudio enumerates, and be longer than any read
    infile.write_bytes(in_pcm if in_pcm is not None else bytes(int(48000 * 2 * rate_in_s)))
    (home / ".asoundrc").write_text(textwrap.dedent(f"""
        pcm.usbmic {{
            type file
            slave.pcm "null"
            file "{tmp_path}/out.raw"
            infile "{infile}"
            format "raw"
        }}
        pcm.!default {{ type plug; slave.pcm "usbmic" }}
    """))
    return home


def run_py(home: Path, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=clean_env(HOME=str(home)), capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_devices_lists_the_virtual_device_with_rates(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    p = subprocess.run(voiced_cmd("devices"), env=clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0, p.stderr
    assert "usbmic" in p.stdout
    assert "input rates:" in p.stdout and "24k" in p.stdout and "48k" in p.stdout
    assert "[default input, default output]" in p.stdout


SELECT = """
import sys
from voiced.audio.pyaudio_backend import open_portaudio, select_device
from voiced.errors import ConfigError
pa = open_portaudio()
try:
    d = select_device(pa, {spec!r}, is_input=True, key="audio.input.device")
    print("OK", d.index, d.name)
except ConfigError as e:
    print("ERR", e.lines()[0])
"""


@pytest.mark.parametrize(("spec", "want"), [
    ("USBMIC", "OK"), ("usb", "OK"), (0, "OK"), ("default", "OK"),
    ("Blue Yeti", 'ERR voiced: config error: audio.input.device: no input device matches'),
    (7, "ERR voiced: config error: audio.input.device: no input device has index 7"),
])
def test_device_selection_by_name_index_default(tmp_path: Path, spec: object,
                                                want: str) -> None:
    home = alsa_home(tmp_path)
    p = run_py(home, SELECT.format(spec=spec))
    assert p.stdout.startswith(want), p.stdout + p.stderr
    if want.startswith("ERR"):
        assert '"usbmic"' in p.stdout  # the error lists what was found


def test_ambiguous_name_is_a_config_error(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    # "u" matches usbmic and nothing else here, "m" neither: make two devices share a word
    rc = home / ".asoundrc"
    rc.write_text(rc.read_text() + '\npcm.usbmic2 { type plug; slave.pcm "usbmic" }\n')
    p = run_py(home, SELECT.format(spec="usbm"))
    assert "matches several input devices" in p.stdout, p.stdout + p.stderr


def _hold_open(path: Path) -> subprocess.Popen[str]:
    """A process that holds ``path`` open until its stdin closes (as a sound server would)."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1]); "
                              "print('open', flush=True); sys.stdin.read()", str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "open\n"
    return child


def test_busy_device_error_names_the_process_holding_it(tmp_path: Path) -> None:
    """PortAudio says only "Device unavailable"; the error says who has the device open.
    /dev/snd does not exist here, so the nodes are files in a directory standing in for
    it; the scan of /proc for processes holding them is the real one."""
    from voiced.audio.pyaudio_backend import DeviceInfo, _explain_open_error
    snd = tmp_path / "snd"
    snd.mkdir()
    for node in ("pcmC1D0c", "pcmC1D0p", "pcmC2D0c"):
        (snd / node).touch()
    busy = OSError(-9985, "Device unavailable")
    mic = DeviceInfo(3, "USB PnP Sound Device: Audio (hw:1,0)", 1, 0, 48000, "ALSA")
    assert "check `fuser -v /dev/snd/*`" in _explain_open_error(busy, mic, "input",
                                                                snd_dir=snd)
    speaker_holder = _hold_open(snd / "pcmC1D0p")  # the same card's playback side
    other_card = _hold_open(snd / "pcmC2D0c")  # another card's mic
    try:
        msg = _explain_open_error(busy, mic, "input", snd_dir=snd)
        assert "is busy: another program holds it" in msg, msg  # neither is this mic
        mic_holder = _hold_open(snd / "pcmC1D0c")
        try:
            comm = Path(f"/proc/{mic_holder.pid}/comm").read_text().strip()
            msg = _explain_open_error(busy, mic, "input", snd_dir=snd)
            assert msg.startswith(f'input device 3 "{mic.name}" is busy: held by {comm} '
                                  f"(pid {mic_holder.pid}); stop that program"), msg
            assert "Device unavailable" in msg  # PortAudio's own words are kept
            # a name without (hw:C,D), such as "default": any capture node counts
            msg = _explain_open_error(busy, DeviceInfo(0, "default", 32, 32, 44100, "ALSA"),
                                      "input", snd_dir=snd)
            assert f"(pid {mic_holder.pid})" in msg and f"(pid {other_card.pid})" in msg
            assert f"(pid {speaker_holder.pid})" not in msg
        finally:
            mic_holder.communicate(timeout=TIMEOUT)
    finally:
        for child in (speaker_holder, other_card):
            child.communicate(timeout=TIMEOUT)


# A mic on the device in argv[1] (default: the clocked one), channel argv[2] if given
# (audio.input.channel); it prints the first {nbytes} bytes it delivers at 24 kHz.
CAPTURE = """
import asyncio, sys
from voiced.audio import pyaudio_source
from voiced.audio.pyaudio_backend import PyAudioSource
from voiced.config import AudioEndpointSettings
# room for 20 s of frames: a busy machine's loop may fall behind the device for a while
pyaudio_source._QUEUE_FRAMES = 1000
device = sys.argv[1] if len(sys.argv) > 1 else "clock"
channel = int(sys.argv[2]) if len(sys.argv) > 2 else None
async def main():
    src = PyAudioSource(AudioEndpointSettings(device=device, rate_hz={rate},
                                              channel=channel), frame_ms=20,
                        block_ms={block})
    filtered, batches = [], []
    def frame_filter(f):  # the echo canceller's place: one frame at a time
        filtered.append(len(f))
        return f
    src.frame_filter = frame_filter
    deliver = src._deliver
    def counted(frames, generation):
        batches.append(len(frames))
        deliver(frames, generation)
    src._deliver = counted
    await src.start()
    out = bytearray()
    while len(out) < {nbytes}:
        out += await asyncio.wait_for(src.read(), 10)
    await src.aclose()
    assert src.dropped_frames == 0, src.dropped_frames
    sys.stdout.buffer.write(bytes(out[:{nbytes}]))
    sys.stderr.write("RATE %d\\n" % src.rate)
    sys.stderr.write("FILTERED %s\\n" % sorted(set(filtered)))
    sys.stderr.write("BATCH %d\\n" % max(batches))
asyncio.run(main())
"""


def clocked_mic(tmp_path: Path, pcm: bytes) -> dict[str, str]:
    """The environment in which ALSA's ``clock`` device is a mic playing ``pcm`` (looped)
    at real time, as a card does. Capture tests use it rather than the file plugin: that
    one is not clocked, captures as fast as the CPU goes, and overran the mic's queue
    whenever the machine was busy."""
    from tests.clock_device import clock_device_env

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the clocked ALSA device (scripts/setup.sh installs it)")
    (tmp_path / "mic.raw").write_bytes(pcm)
    return clock_device_env(tmp_path, tmp_path / "mic.raw")


@pytest.mark.parametrize(("rate", "block"), [(48000, 20), (44100, 20), (48000, 60)])
def test_capture_at_native_rate_is_resampled_without_seams(tmp_path: Path, rate: int,
                                                           block: int) -> None:
    """Every sample in order, whether one frame or a block of them (``audio.block_ms``,
    issue 21) crosses to the loop per callback; the frame filter sees 20 ms frames."""
    seconds = 2.0
    t = np.arange(int(rate * (seconds + 1))) / rate
    # a chirp: any discontinuity at a chunk border shows up against the one-shot result
    sig = (0.5 * np.sin(2 * np.pi * (200 + 300 * t) * t) * 32767).astype("<i2")
    nbytes = int(24000 * seconds) * 2
    p = subprocess.run([sys.executable, "-c", CAPTURE.format(rate=rate, nbytes=nbytes,
                                                             block=block)],
                       env=clocked_mic(tmp_path, sig.tobytes()), capture_output=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    assert f"RATE {rate}" in p.stderr.decode()
    assert "FILTERED [960]" in p.stderr.decode()
    batch = int(p.stderr.decode().split("BATCH ")[1].split()[0])
    assert block // 20 <= batch <= block // 20 + 1  # +1: the resampler's uneven output
    got = np.frombuffer(p.stdout, dtype="<i2").astype(np.float64)
    want = soxr.resample(sig, rate, 24000, quality=QUALITY).astype(np.float64)
    # the streaming resampler has a delay; align on the best lag, then compare
    lags = range(0, 200)
    errs = [np.max(np.abs(got[1000:40000] - want[1000 - lag:40000 - lag])) for lag in lags]
    best = int(np.argmin(errs))
    assert errs[best] <= 2, f"streaming differs from one-shot by {errs[best]} (lag {best})"


def test_capture_keeps_only_the_configured_channel(tmp_path: Path) -> None:
    """audio.input.channel: 1 on a two-channel mic: the right channel alone reaches the
    server, resampled; the left one (here loud noise) is not mixed in."""
    rate, seconds = 48000, 1.0
    t = np.arange(int(rate * (seconds + 1))) / rate
    right = (0.4 * np.sin(2 * np.pi * 300 * t) * 32767).astype("<i2")
    left = (np.random.default_rng(5).standard_normal(len(t)) * 8000).astype("<i2")
    stereo = np.column_stack([left, right]).reshape(-1)
    nbytes = int(24000 * seconds) * 2
    p = subprocess.run([sys.executable, "-c", CAPTURE.format(rate=rate, nbytes=nbytes, block=20),
                        "clock", "1"], env=clocked_mic(tmp_path, stereo.tobytes()),
                       capture_output=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    got = np.frombuffer(p.stdout, dtype="<i2").astype(np.float64)
    want = soxr.resample(right, rate, 24000, quality=QUALITY).astype(np.float64)
    errs = [np.max(np.abs(got[1000:20000] - want[1000 - lag:20000 - lag]))
            for lag in range(0, 200)]
    assert min(errs) <= 2, f"not the right channel alone: off by {min(errs)}"


# A speaker on the file device at the rate in argv[1], playing the raw reply files named
# after it ({body} decides how); it prints the rate it opened at once all has drained.
PLAY = """
import asyncio, sys
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings
async def main():
    sink = PyAudioSink(AudioEndpointSettings(device="usbmic", rate_hz=int(sys.argv[1])),
                       jitter_ms=40)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    replies = [open(f, "rb").read() for f in sys.argv[2:]]
{body}
    await asyncio.wait_for(drained.wait(), 10)
    await asyncio.sleep(0.1)
    print("RATE", sink.rate)
    await sink.aclose()
asyncio.run(main())
"""

PLAY_WITH_A_GAP = PLAY.format(body="""\
    pcm = replies[0]
    half = len(pcm) // 2 // 2 * 2
    sink.play(pcm[:half], "item_1")
    await asyncio.sleep(0.3)  # the null device drains at once: a gap, so an underrun
    sink.play(pcm[half:], "item_1")""")


def test_playback_reaches_the_device_bit_exact(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(24000) * 3000).astype("<i2").tobytes()  # 1 s
    src = tmp_path / "reply.raw"
    src.write_bytes(pcm)
    p = subprocess.run([sys.executable, "-c", PLAY_WITH_A_GAP, "24000", str(src)],
                       env=clean_env(HOME=str(home)), capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "RATE 24000" in p.stdout
    out = (tmp_path / "out.raw").read_bytes()
    half = len(pcm) // 2 // 2 * 2
    # both halves arrive intact, in order; between them the device got silence
    a = out.find(pcm[:half])
    b = out.find(pcm[half:])
    assert a >= 0 and b > a, "reply audio not found intact in what the device received"
    assert not any(out[a + half:b]), "the gap must be silence"


PLAY_TWO_ITEMS = PLAY.format(body="""\
    # one reply, then the next while the first is still queued. The file device is not
    # clocked: it drains a second of audio in milliseconds, so on a busy machine the
    # first could be gone before the second came. The device takes nothing meanwhile.
    sink._stream.stop_stream()
    sink.play(replies[0], "item_a")
    sink.play(replies[1], "item_b")
    sink._stream.start_stream()""")


def test_a_replys_resampler_tail_plays_after_it_not_in_the_next(tmp_path: Path) -> None:
    """At 48 kHz the resampler holds the end of each reply back. It is flushed after that
    reply when the next one starts, and the next one starts from a clean filter: the
    device gets each reply exactly as if it had been converted on its own."""
    from voiced.audio.libsoxr import Resampler
    home = alsa_home(tmp_path)
    rng = np.random.default_rng(2)
    a, b = ((rng.standard_normal(24000) * 3000).astype("<i2").tobytes() for _ in range(2))
    (tmp_path / "a.raw").write_bytes(a)
    (tmp_path / "b.raw").write_bytes(b)
    p = subprocess.run([sys.executable, "-c", PLAY_TWO_ITEMS, "48000", str(tmp_path / "a.raw"),
                        str(tmp_path / "b.raw")], env=clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "RATE 48000" in p.stdout
    whole_a = Resampler(24000, 48000, quality=QUALITY).process(a, last=True)
    head_b = Resampler(24000, 48000, quality=QUALITY).process(b)  # b's tail: no next reply
    out = (tmp_path / "out.raw").read_bytes()
    assert out.find(whole_a + head_b) >= 0, "the replies did not reach the device as converted"


def test_test_audio_command_records_and_plays_back(tmp_path: Path) -> None:
    t = np.arange(48000 * 4) / 48000
    tone = (0.25 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    home = alsa_home(tmp_path, in_pcm=tone.tobytes())
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "realtime": {"url": "ws://127.0.0.1:1/v1/realtime"},
        "audio": {"input": {"device": "usbmic", "rate_hz": 48000},
                  "output": {"device": "usbmic"}},
        "control": {"socket": str(tmp_path / "c.sock")}}))
    p = subprocess.run(voiced_cmd("test-audio", "-c", str(cfg), "--seconds", "1"),
                       env=clean_env(HOME=str(home)), capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("peak"))
    peak = float(line.split()[1])
    assert -13.5 < peak < -11.0  # a 0.25 full-scale sine is -12 dBFS
    assert "done" in p.stdout


def test_unknown_device_in_run_is_exit_78_with_the_device_list(tmp_path: Path) -> None:
    home = alsa_home(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "realtime": {"url": "ws://127.0.0.1:1/v1/realtime"},
        "audio": {"input": {"device": "Blue Yeti"}},
        "control": {"socket": str(tmp_path / "c.sock")}}))
    p = subprocess.run(voiced_cmd("run", "-c", str(cfg)), env=clean_env(HOME=str(home)),
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 78, p.stderr[-2000:]
    assert 'voiced: config error: audio.input.device: no input device matches "Blue Yeti"' \
        in p.stderr
    assert "Traceback" not in p.stderr
    json.dumps(p.stderr)  # printable


BOUNDED = """
import asyncio, sys
from voiced.audio.pyaudio_backend import PyAudioSink
from voiced.config import AudioEndpointSettings
async def main():
    sink = PyAudioSink(AudioEndpointSettings(device="usbmic", rate_hz=int(sys.argv[1])),
                       jitter_ms=40, max_queued_s=1.0)
    drained = asyncio.Event()
    sink.set_drained_callback(drained.set)
    await sink.start()
    pcm = bytes(2 * 24000 * 3)  # 3 s at 24 kHz
    taken = sink.play(pcm, "item_1")
    print("TAKEN", taken, "QUEUED", round(sink.queued_s, 2))
    await asyncio.wait_for(drained.wait(), 10)
    await sink.aclose()
asyncio.run(main())
"""


@pytest.mark.parametrize("rate", [24000, 48000])
def test_the_speaker_queue_holds_at_most_max_queued_s(tmp_path: Path, rate: int) -> None:
    """Issue 17, finding 6: an endless reply at 50x real time grew the queue without bound.
    play() takes what fits in audio.max_queued_s (at the device's rate) and says so."""
    home = alsa_home(tmp_path)
    p = subprocess.run([sys.executable, "-c", BOUNDED, str(rate)],
                       env=clean_env(HOME=str(home)), capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    taken, queued = p.stdout.split()[1], float(p.stdout.split()[3])
    assert int(taken) == 2 * 24000  # one second of the three
    assert 0.9 <= queued <= 1.01
