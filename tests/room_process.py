"""The room of tests/test_aec_run.py, as a process of its own: what a mic in a room hears.

Two streams of libpulse's simple (blocking) API in one real-time thread: it reads a block
of the speaker's monitor (``PULSE_SOURCE``) and writes the block it turns into to the
mic's sink (``PULSE_SINK``): the speaker's sound from ``--delay-ms`` ago at ``--gain``,
plus the user's voices. Both lines are gapless (the record stream queues in the server;
the mic's stream starts with a cushion of ``--cushion-ms``), so the delay is a fixed
offset in the room's own line, constant by construction while the cushion never runs
dry: no pipe between a reader and a writer can fill up when the machine is busy (the room
as a thread in pytest, parec -> pacat, let pacat's pipe grow from 400 ms to 1.2 s in one
run). Whether it ran dry is checked, not assumed: ``MicCheck``. Started with real-time
scheduling by the test (``chrt -f``, see ``room_command``), which its threads inherit.

Commands on stdin, one a line: ``say PATH`` (a float32 .npy voice, from the next block
on), ``trigger PATH N`` (that voice once the monitor has had N samples since its next
loud one), ``stop`` (save ``--out``.npz: monitor, echo, voice; then exit). On stdout:
``at N`` (room samples so far, every 50 ms), ``voice N`` (a voice's first room sample),
``flags F N`` (a fault at room sample N; F = 256: the mic's line moved, see
``LineCheck``; 512: its streams failed, with ``error TEXT`` before; PortAudio's
over/underflow flags in the room before), ``moved D N`` (by D samples), ``latency IN
OUT`` (the streams', s), ``checked B blocks, moved S samples`` and ``cpu C`` (its CPU
share) at the end, ``saved``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

RATE = 24000
BLOCK = 480  # 20 ms
# The mic's stream in the server: how late the room may be before the mic runs dry.
# With the record stream's 17-33 ms the path is near the PortAudio stream's 40 + 60 ms
# it replaces: `voiced run` found the echo 125-128 ms behind the speaker's position
# (104 before), well inside the canceller's 200 ms tail.
CUSHION_MS = 80
ROOM_FAILED = 0x200  # a flag: the room's streams failed, it plays no more
LOUD = 300  # the monitor's level that starts a trigger's count


class Room:
    def __init__(self, delay: int, gain: float, noise: float = 0.0) -> None:
        self.line = np.zeros(delay)
        self.gain = gain
        # a mic's self-noise (RMS, in LSB): a real mic never hands over digital silence,
        # and on one that does the echo canceller's output rounds to exact zeros
        self.noise = noise
        self.rng = np.random.default_rng(2)
        self.at = 0
        self.monitor: list[np.ndarray] = []
        self.echo: list[np.ndarray] = []
        self.voice: list[np.ndarray] = []
        self.played: list[np.ndarray] = []  # what the room handed to PortAudio, int16
        self.pending: list[tuple[np.ndarray, int | None]] = []  # voice, trigger samples
        self.playing: list[tuple[np.ndarray, int]] = []
        self.trigger: tuple[np.ndarray, int] | None = None
        self.loud_since: int | None = None
        self.events: list[str] = []
        self.lock = threading.Lock()

    def step(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        with self.lock:
            pending, self.pending = self.pending, []
        for v, after in pending:
            if after is None:
                self.playing.append((v, self.at))
                with self.lock:
                    self.events.append(f"voice {self.at}")
            else:
                self.trigger = (v, after)
                self.loud_since = None
        if self.trigger is not None:
            loud = np.nonzero(np.abs(x) > LOUD)[0]
            if self.loud_since is None and len(loud):
                self.loud_since = self.at + int(loud[0])
            if self.loud_since is not None and \
                    self.at + n - self.loud_since >= self.trigger[1]:
                self.playing.append((self.trigger[0], self.at))
                with self.lock:
                    self.events.append(f"voice {self.at}")
                self.trigger = None
        line = np.concatenate([self.line, x])
        echo = line[:n] * self.gain
        self.line = line[n:]
        voice = np.zeros(n)
        for v, start in self.playing:
            part = v[self.at - start:self.at - start + n]
            voice[:len(part)] += part
        self.playing = [(v, s) for v, s in self.playing if self.at + n - s < len(v)]
        self.monitor.append(x.astype(np.int16))
        self.echo.append(echo.astype(np.float32))
        self.voice.append(voice.astype(np.float32))
        self.at += n
        floor = self.rng.standard_normal(n) * self.noise if self.noise else 0.0
        out = np.clip(np.round(echo + voice + floor), -32768, 32767).astype("<i2")
        with self.lock:
            self.played.append(out)
        return out


class LineCheck:
    """Whether what reached the mic is what the room played, in one gapless line.

    A run-dry on the mic's side (the room's data late in the server: the sink ``mic``
    plays silence in between and everything after comes later) shows in no stream flag:
    PortAudio's never had it (a probe saw +120..+390 samples in 10 s and no flag) and
    the simple API has none. So the recording of ``mic.monitor`` (``rec``) is compared
    with the blocks the room played (the null sink is bit-exact, the room its only
    stream): each is found there, the offset between the two lines is constant while
    the room keeps time, and every change is reported (``moved D N``: D samples, at room
    sample N; and as ``flags 256 N``, so a reader of the flags sees it). Blocks of
    silence say nothing and are skipped; a block the move falls in is not found whole
    and the next one decides."""

    MOVED = 0x100  # beside PortAudio's flags (1..16), which readers know
    WINDOW = 2 * RATE  # how far from where it should be a block is looked for

    def __init__(self, room: Room) -> None:
        self.room = room
        self.rec = np.zeros(0, np.int16)
        self.offset: int | None = None  # mic.monitor sample = room sample + offset
        self.checked = 0  # room blocks looked at
        self.moved = 0  # samples the line moved in all

    def check(self) -> None:
        with self.room.lock:
            played = self.room.played[self.checked:]
        for block in played:
            at = self.checked * len(block)  # the room's blocks are all one size
            if self.offset is not None and at + self.offset + len(block) > len(self.rec):
                return  # not recorded yet
            self.checked += 1
            if not np.any(block):
                continue
            if self.offset is not None:
                p = at + self.offset
                if np.array_equal(self.rec[p:p + len(block)], block):
                    continue
            found = self.find(block, at)
            if found is None:
                continue
            if self.offset is not None and found - at != self.offset:
                d = found - at - self.offset
                self.moved += abs(d)
                with self.room.lock:
                    self.room.events += [f"moved {d} {at}", f"flags {self.MOVED} {at}"]
                print(f"room: the mic's line moved {d} samples at room sample {at}",
                      file=sys.stderr, flush=True)
            self.offset = found - at

    def find(self, block: np.ndarray, at: int) -> int | None:
        """Where ``block`` (played at room sample ``at``) is in the recording."""
        lo, hi = 0, len(self.rec)
        if self.offset is not None:
            lo = max(0, at + self.offset - self.WINDOW)
            hi = min(hi, at + self.offset + self.WINDOW + len(block))
        j = int(np.argmax(np.abs(block.astype(np.int32))))  # its rarest value, likely
        # a sound that repeats (the probe's clicks) matches more than once: the first
        # sound the room played is the first in the mic (nothing else plays there),
        # after that the match nearest where it should be
        expect = 0 if self.offset is None else at + self.offset
        best: int | None = None
        for c in np.nonzero(self.rec[lo + j:hi - len(block) + j + 1] == block[j])[0]:
            p = lo + int(c)
            if (best is None or abs(p - expect) < abs(best - expect)) and \
                    np.array_equal(self.rec[p:p + len(block)], block):
                best = p
        return best

class MicCheck(LineCheck):
    """The line check on a recording of ``mic.monitor`` made as the room runs (parec:
    its record stream queues in the server, nothing is lost when parec is late)."""

    def __init__(self, room: Room, env: dict[str, str]) -> None:
        super().__init__(room)
        cmd = ["parec", "--device=mic.monitor", "--raw", "--format=s16le",
               f"--rate={RATE}", "--channels=1", "--latency-msec=100"]
        if os.sched_getscheduler(0) != os.SCHED_OTHER and shutil.which("chrt"):
            cmd = ["chrt", "-o", "0", *cmd]  # a recorder, not part of the room's timing
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, bufsize=0)
        self.stop = threading.Event()
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.read(2 * RATE // 50)  # recording: the room may start
        # (unbuffered: the thread reads the descriptor on from exactly here)
        self.thread = threading.Thread(target=self._run, name="mic-check", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        # This thread stays at the room's real-time priority: it shares the GIL with the
        # room's thread, and a normal-priority thread holding it on a busy machine made
        # the room wait (one move seen under two busy loops). Its work is small: the
        # recording grows in place (no copy of the whole per read) and each new block is
        # compared once.
        assert self.proc.stdout is not None
        buf = np.zeros(60 * RATE, np.int16)
        n = 0
        rest = self.first
        while not self.stop.is_set():
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                break
            raw = rest + data
            new = np.frombuffer(raw[:len(raw) // 2 * 2], "<i2")
            rest = raw[len(new) * 2:]
            if n + len(new) > len(buf):
                buf = np.concatenate([buf, np.zeros(max(len(buf), len(new)), np.int16)])
            buf[n:n + len(new)] = new
            n += len(new)
            self.rec = buf[:n]
            self.check()

    def close(self) -> None:
        self.proc.terminate()
        self.stop.set()
        self.thread.join(10)
        self.proc.wait(10)
        self.check()


class SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32),
                ("channels", ctypes.c_uint8)]


class BufferAttr(ctypes.Structure):
    _fields_ = [("maxlength", ctypes.c_uint32), ("tlength", ctypes.c_uint32),
                ("prebuf", ctypes.c_uint32), ("minreq", ctypes.c_uint32),
                ("fragsize", ctypes.c_uint32)]


class Simple:
    """One stream of libpulse's simple (blocking) API: ``pa_simple_read`` waits in
    libpulse for a whole block, ``pa_simple_write`` returns once the block is queued.

    Not PortAudio: its full-duplex ALSA stream on the ``pulse`` device spun in its poll
    loop in some runs (95% of a core from the start, at the room's real-time priority,
    so the server and everything else shared the other core; pacat could not even
    connect in 30 s), and a run-dry in the server never reached its flags anyway."""

    PLAYBACK, RECORD = 1, 2
    S16LE = 3

    def __init__(self, direction: int, device: str, block: int, *, cushion: int = 0
                 ) -> None:
        self.lib = ctypes.CDLL("libpulse-simple.so.0")
        self.lib.pa_simple_new.restype = ctypes.c_void_p
        self.lib.pa_simple_get_latency.restype = ctypes.c_uint64
        for f in ("read", "write", "get_latency", "drain", "free"):
            getattr(self.lib, f"pa_simple_{f}").argtypes = [ctypes.c_void_p] + (
                [ctypes.c_void_p, ctypes.c_size_t] if f in ("read", "write") else []) + (
                [] if f == "free" else [ctypes.POINTER(ctypes.c_int)])
        spec = SampleSpec(self.S16LE, RATE, 1)
        none = 0xFFFFFFFF  # the server's choice
        # record: the server sends whole blocks; playback: the cushion is what may wait
        # in the server (tlength), and it starts once the cushion is there (prebuf)
        attr = BufferAttr(none, 2 * cushion or none, none, 2 * block,
                          2 * block) if direction == self.PLAYBACK else \
            BufferAttr(none, none, none, none, 2 * block)
        err = ctypes.c_int(0)
        self.s = self.lib.pa_simple_new(None, b"room", direction, device.encode(),
                                        b"room", ctypes.byref(spec), None,
                                        ctypes.byref(attr), ctypes.byref(err))
        if not self.s:
            raise SystemExit(f"pa_simple_new({device}) failed: error {err.value}")

    def read(self, n: int) -> np.ndarray:
        buf = ctypes.create_string_buffer(2 * n)
        err = ctypes.c_int(0)
        if self.lib.pa_simple_read(self.s, buf, 2 * n, ctypes.byref(err)) < 0:
            raise OSError(f"pa_simple_read failed: error {err.value}")
        return np.frombuffer(buf.raw, "<i2")

    def write(self, x: np.ndarray) -> None:
        data = x.astype("<i2").tobytes()
        err = ctypes.c_int(0)
        if self.lib.pa_simple_write(self.s, data, len(data), ctypes.byref(err)) < 0:
            raise OSError(f"pa_simple_write failed: error {err.value}")

    def latency(self) -> float:
        err = ctypes.c_int(0)
        return float(self.lib.pa_simple_get_latency(self.s, ctypes.byref(err))) / 1e6

    def drain(self) -> None:
        """Wait until what was written has been played."""
        self.lib.pa_simple_drain(self.s, ctypes.byref(ctypes.c_int(0)))

    def close(self) -> None:
        self.lib.pa_simple_free(self.s)


def room_command(args: list[str]) -> list[str]:
    """The command line that starts this room with ``args``, as tests/test_aec_run.py
    starts it: real-time scheduling where it may have it (root with chrt), else a nicer
    place in the queue (root), else as it is."""
    cmd = [sys.executable, __file__, *args]
    if os.geteuid() == 0 and shutil.which("chrt"):
        return ["chrt", "-f", "10", *cmd]
    if os.geteuid() == 0:
        return ["nice", "-n", "-15", *cmd]
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=int, required=True)
    ap.add_argument("--gain", type=float, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--block", type=int, default=BLOCK, help="samples per step")
    ap.add_argument("--cushion-ms", type=int, default=CUSHION_MS,
                    help="what the mic's stream holds in the server")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="the mic's self-noise, RMS in LSB (3: about -80 dBFS)")
    args = ap.parse_args()
    started = time.monotonic()
    room = Room(RATE * args.delay_ms // 1000, args.gain, args.noise)

    check = MicCheck(room, dict(os.environ))
    block = args.block
    src = Simple(Simple.RECORD, os.environ.get("PULSE_SOURCE", "spk.monitor"), block)
    sink = Simple(Simple.PLAYBACK, os.environ.get("PULSE_SINK", "mic"), block,
                  cushion=RATE * args.cushion_ms // 1000)
    sink.write(np.zeros(RATE * args.cushion_ms // 1000))  # the cushion: playback starts
    running = threading.Event()
    running.set()

    def loop() -> None:
        # each block read turns into the block written: the mic's line is the speaker's
        # line moved by a constant (the delay, the cushion, the record fragment)
        try:
            while running.is_set():
                sink.write(room.step(src.read(block).astype(np.float64)))
        except OSError as e:  # the server went away: the room stops, and says so
            with room.lock:
                room.events += [f"error {e}", f"flags {ROOM_FAILED} {room.at}"]

    print(f"latency {src.latency():.4f} {sink.latency():.4f}", flush=True)
    player = threading.Thread(target=loop, name="room", daemon=True)
    player.start()
    stop = threading.Event()

    def report() -> None:
        while not stop.is_set():
            with room.lock:
                events, room.events = room.events, []
            for e in [*events, f"at {room.at}"]:
                print(e, flush=True)
            time.sleep(0.05)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    check.start()
    for raw in sys.stdin:
        cmd = raw.split()
        if not cmd:
            continue
        if cmd[0] == "stop":
            break
        voice = np.load(cmd[1]).astype(np.float64)
        with room.lock:
            room.pending.append((voice, int(cmd[2]) if cmd[0] == "trigger" else None))
    running.clear()
    player.join(5)
    src.close()
    sink.drain()  # the cushion's blocks too, so the check sees every block played
    sink.close()
    time.sleep(0.3)  # the last blocks through the sink into the recording
    check.close()
    stop.set()
    reporter.join()
    for e in room.events:
        print(e, flush=True)
    # mic: mic.monitor as parec recorded it (what the daemon's mic was given); room
    # sample N is mic sample N + mic_offset, where the line check found it (mic_found)
    np.savez(args.out, monitor=np.concatenate(room.monitor),
             echo=np.concatenate(room.echo), voice=np.concatenate(room.voice),
             mic=check.rec, mic_offset=np.array(check.offset or 0),
             mic_found=np.array(check.offset is not None))
    print(f"at {room.at}", flush=True)
    print(f"checked {check.checked} blocks, moved {check.moved} samples", flush=True)
    # the room's own CPU share (at real-time priority, what it takes from the rest)
    print(f"cpu {time.process_time() / (time.monotonic() - started):.3f}", flush=True)
    print("saved", flush=True)


if __name__ == "__main__":
    main()
