"""Acoustic echo cancellation: speexdsp's echo canceller (Debian's ``libspeexdsp1``) via ctypes.

Why speexdsp (docs/architecture.md, "Echo cancellation", has the figures): it is in every
Debian and Raspberry Pi OS architecture as a small C library with a stable C API, so it
needs no wheel, no compiler and no C++ shim on armhf; WebRTC's AEC3 is better on hard
rooms, but no maintained Python binding has an armhf wheel, and Debian bookworm's
``libwebrtc-audio-processing1`` is the 2016 C++ library with no C API.

The canceller runs at 24 kHz, the wire rate, so the mic path needs no resampler (and no
resampler's delay) on either side. ``EchoCanceller`` pairs each mic frame with the
speaker samples that were being played when it was captured: the caller hands over what
it gives the speaker together with the speaker's position (``played``) and asks for a
clean frame with the position at the time the mic frame was read (``process``); the
adaptive filter absorbs the rest of the delay (device buffers, the room) up to
``tail_ms``. Speex's preprocessor then suppresses the residual echo the linear filter
leaves (``suppress``).

When a frame costs more than ``budget`` of its own duration on average over ``window``
frames, the canceller gets out of the way (returns the mic frame as it is), says so
through ``on_bypass``, and tries again after ``retry_s`` of audio.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from voiced import guard
from voiced.audio.delay import DelayEstimator, envelope
from voiced.audio.native import declare, load_library, loads
from voiced.wire import BYTES_PER_SAMPLE, SAMPLE_RATE

logger = logging.getLogger(__name__)

# speex_echo.h / speex_preprocess.h request numbers (stable since speexdsp 1.2rc1)
_ECHO_SET_SAMPLING_RATE: Final = 24
_ECHO_GET_IMPULSE_RESPONSE_SIZE: Final = 27
_ECHO_GET_IMPULSE_RESPONSE: Final = 29
_PRE_SET_DENOISE: Final = 0
_PRE_SET_NOISE_SUPPRESS: Final = 18
_PRE_SET_ECHO_SUPPRESS: Final = 20
_PRE_SET_ECHO_SUPPRESS_ACTIVE: Final = 22
_PRE_SET_ECHO_STATE: Final = 24

_ALIGN_WINDOW: Final = 25  # mic frames whose position disagreement is weighed together
_JUMP_S: Final = 0.5  # a disagreement this large is a new timeline, not drift
_ESTIMATE_EVERY_S: Final = 0.5  # audio between two bulk delay estimates
_MARGIN_MS: Final = 50  # the echo is put this far into the tail: estimate error either way
# a reference ahead of the timed position by less than this still finds the echo inside
# the tail (it lands _MARGIN_MS into it): PortAudio's DAC times through PulseAudio's ALSA
# plugin wander by tens of ms, and every move is an echo path change to the filter
_AHEAD_MS: Final = 40
_MOVE_MS: Final = 30  # a new estimate this far from the current one moves the reference
_CONVERGED_ERLE_DB: Final = 30.0  # the filter's echo loss that opens the gate
_ERLE_SMOOTH: Final = 0.1  # per block with speaker sound
_RESUME_S: Final = 0.5  # speaker sound after this much quiet is checked for convergence
# speaker sound over which the echo loss must hold before the gate opens: a new filter
# crosses 30 dB on the smoothed measure before its peaks are below a VAD's threshold
# (through `voiced run` it opened at 31 dB and the echo started a turn a second later);
# after a pause, the same filter needs only to show it still fits
_SETTLE_S: Final = 0.5
_RECHECK_S: Final = 0.2
_REPLAY_S: Final = 2.0  # mic audio a move of the bulk delay replays (the estimate's window)

FRAME_MS: Final = (10, 20)
"""Frame lengths the canceller runs on (speex's block; 20 ms halves the per-frame calls)."""


@functools.cache
def _lib() -> Any:
    """Libspeexdsp with its prototypes; MissingLibraryError naming the package."""
    lib = load_library("libspeexdsp.so.1", "speexdsp", package="libspeexdsp1",
                       feature="echo cancellation (audio.echo: aec)")
    vp, cint, buf = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    declare(lib, {
        "speex_echo_state_init": (vp, [cint, cint]),
        "speex_echo_state_destroy": (None, [vp]),
        "speex_echo_state_reset": (None, [vp]),
        "speex_echo_ctl": (cint, [vp, cint, vp]),
        "speex_echo_cancellation": (None, [vp, buf, buf, vp]),
        "speex_preprocess_state_init": (vp, [cint, cint]),
        "speex_preprocess_state_destroy": (None, [vp]),
        "speex_preprocess_ctl": (cint, [vp, cint, vp]),
        "speex_preprocess_run": (cint, [vp, ctypes.POINTER(ctypes.c_int16)]),
    })
    return lib


def available() -> bool:
    """Whether libspeexdsp can be loaded here (for ``voiced check-config`` and tests)."""
    return loads(_lib)


class _SpeexAec:
    """One speex echo state plus its preprocessor: owns the C objects, frees them once."""

    def __init__(self, frame: int, tail: int, suppress: bool) -> None:
        lib = self._lib = _lib()
        self.frame = frame
        self._echo = lib.speex_echo_state_init(frame, tail)
        if not self._echo:
            raise MemoryError("speex_echo_state_init failed")
        rate = ctypes.c_int(SAMPLE_RATE)
        lib.speex_echo_ctl(self._echo, _ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = None
        if suppress:
            self._pre = lib.speex_preprocess_state_init(frame, SAMPLE_RATE)
            if not self._pre:
                raise MemoryError("speex_preprocess_state_init failed")
            # residual echo suppression is part of the denoiser's gain: it needs it on
            for request, value in ((_PRE_SET_DENOISE, 1), (_PRE_SET_NOISE_SUPPRESS, -15),
                                   (_PRE_SET_ECHO_SUPPRESS, -40),
                                   (_PRE_SET_ECHO_SUPPRESS_ACTIVE, -15)):
                v = ctypes.c_int(value)
                lib.speex_preprocess_ctl(self._pre, request, ctypes.byref(v))
            lib.speex_preprocess_ctl(self._pre, _PRE_SET_ECHO_STATE, self._echo)
        self._out = (ctypes.c_int16 * frame)()
        # reading the impulse response uses the state's scratch buffers, which the
        # cancellation writes too: a status request (the loop) must not run beside a block
        self._lock = threading.Lock()

    def run(self, mic: bytes, ref: bytes) -> bytes:
        with self._lock:
            self._lib.speex_echo_cancellation(self._echo, mic, ref, self._out)
            if self._pre is not None:
                self._lib.speex_preprocess_run(self._pre, self._out)
            return bytes(self._out)

    def impulse_response(self) -> list[int]:
        with self._lock:
            size = ctypes.c_int(0)
            self._lib.speex_echo_ctl(self._echo, _ECHO_GET_IMPULSE_RESPONSE_SIZE,
                                     ctypes.byref(size))
            taps = (ctypes.c_int32 * max(0, size.value))()
            if size.value:
                self._lib.speex_echo_ctl(self._echo, _ECHO_GET_IMPULSE_RESPONSE, taps)
            return list(taps)

    def reset(self) -> None:
        with self._lock:
            self._lib.speex_echo_state_reset(self._echo)

    def __del__(self) -> None:
        echo, self._echo = getattr(self, "_echo", None), None
        pre, self._pre = getattr(self, "_pre", None), None
        if pre:
            self._lib.speex_preprocess_state_destroy(pre)
        if echo:
            self._lib.speex_echo_state_destroy(echo)


class _FarRing:
    """The speaker's recent samples by absolute position, ``size`` of them at most.

    What was never handed over (an underrun, a gap between replies) reads as silence.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = bytearray(size * BYTES_PER_SAMPLE)
        self.end = 0  # one past the newest position written

    def write(self, pcm: bytes, position: int) -> None:
        n = len(pcm) // BYTES_PER_SAMPLE
        if position > self.end:  # a stretch nobody reported: silence
            self._fill(self.end, min(position - self.end, self.size), None)
        if n > self.size:
            pcm, position, n = pcm[-self.size * BYTES_PER_SAMPLE:], position + n - self.size, \
                self.size
        self._fill(position, n, pcm)
        self.end = max(self.end, position + n)

    def _fill(self, position: int, n: int, pcm: bytes | None) -> None:
        done = 0
        while done < n:
            at = (position + done) % self.size
            take = min(n - done, self.size - at)
            chunk = (bytes(take * BYTES_PER_SAMPLE) if pcm is None else
                     pcm[done * BYTES_PER_SAMPLE:(done + take) * BYTES_PER_SAMPLE])
            self._buf[at * BYTES_PER_SAMPLE:(at + take) * BYTES_PER_SAMPLE] = chunk
            done += take

    def read(self, start: int, n: int) -> bytes:
        """Samples ``[start, start + n)``.

        Silence before the ring's oldest sample and from ``end`` on (not played yet).
        """
        out = bytearray(n * BYTES_PER_SAMPLE)
        lo, hi = max(start, self.end - self.size, 0), min(start + n, self.end)
        pos = lo
        while pos < hi:
            at = pos % self.size
            take = min(hi - pos, self.size - at)
            dst = (pos - start) * BYTES_PER_SAMPLE
            out[dst:dst + take * BYTES_PER_SAMPLE] = \
                self._buf[at * BYTES_PER_SAMPLE:(at + take) * BYTES_PER_SAMPLE]
            pos += take
        return bytes(out)


class EchoCanceller:
    """Removes the speaker's sound from 24 kHz PCM16 mono mic frames.

    Args:
        frame_ms: the canceller's block, 10 or 20 ms. ``process`` takes any whole
            number of blocks (the daemon's 40 or 100 ms frames are 2 or 5 of them).
        tail_ms: the longest echo path the filter models: device buffering between the
            position the caller reports and the sound leaving the speaker, the room's
            delay and its reverberation. CPU grows with it.
        latency_ms: how far the reported positions run ahead of the sound (the devices'
            known buffering): subtracted, so less of the tail is spent on it. Too large
            is harmful (the reference would trail the echo, which no filter can undo),
            too small only wastes tail; 0 is the safe default.
        suppress: also run speex's residual echo suppressor (and its noise suppressor,
            on which it depends) after the linear filter.
        budget: the share of a block's duration a block may cost, on average over
            ``window`` blocks, before the canceller bypasses itself.
        retry_s: how much audio passes in bypass before it tries again (from a reset
            filter).
        on_bypass: called with ``(True, reason)`` when the bypass engages and
            ``(False, reason)`` when it is lifted; on the thread that calls ``process``.
        clock: seconds, for the per-block cost (tests inject one).
        max_delay_ms: the longest bulk delay looked for (0: none; the reference stays at
            the reported position less ``latency_ms``).
        gate: the convergence gate: each block whose echo may not be cancelled yet (the
            filter has not shown it fits, and speaker sound was referenced within the
            tail) comes out as silence, so no listener after it hears the echo; decided
            block by block on the thread that calls ``process``, with the state at that
            block (``gated`` counts them).

    ``played`` may be called from the speaker's thread while ``process`` runs on another.
    """

    def __init__(self, *, frame_ms: int = 20, tail_ms: int = 200, latency_ms: int = 0,
                 suppress: bool = True, budget: float = 0.5, window: int = 50,
                 retry_s: float = 30.0, on_bypass: Callable[[bool, str], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 max_delay_ms: int = 0, gate: bool = False) -> None:
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_MS}, not {frame_ms}")
        if not 20 <= tail_ms <= 1000:
            raise ValueError(f"tail_ms must be 20..1000, not {tail_ms}")
        if not 0 <= latency_ms <= 500:
            raise ValueError(f"latency_ms must be 0..500, not {latency_ms}")
        if not 0 < budget <= 1 or window < 1 or retry_s < 0:
            raise ValueError("budget must be in (0, 1], window >= 1, retry_s >= 0")
        self.frame = SAMPLE_RATE * frame_ms // 1000
        self.frame_bytes = self.frame * BYTES_PER_SAMPLE
        self.tail = SAMPLE_RATE * tail_ms // 1000 // self.frame * self.frame
        self._latency = SAMPLE_RATE * latency_ms // 1000
        self._suppress = suppress
        self._aec = _SpeexAec(self.frame, self.tail, suppress)
        # the suppressor works on overlapping windows and hands its output back one
        # block late (measured: tests/test_aec.py); the linear filter adds nothing
        self.delay = self.frame if suppress else 0
        """Samples the cleaned audio lags the mic audio by."""
        self._budget_s = budget * frame_ms / 1000
        self._costs: collections.deque[float] = collections.deque(maxlen=window)
        self._cost_sum = 0.0
        self._retry_frames = int(retry_s * 1000 / frame_ms)
        self._on_bypass = on_bypass
        self._clock = clock
        self._lock = threading.Lock()
        self._estimator = (DelayEstimator(max_delay_ms=max_delay_ms) if max_delay_ms > 0
                           else None)
        self._estimate_frames = int(_ESTIMATE_EVERY_S * 1000 / frame_ms)
        self._until_estimate = self._estimate_frames
        self.bulk = 0
        """Samples the reference is held back by (the bulk delay found, less a margin)."""
        self.bulk_found = max_delay_ms == 0
        self.bulk_estimated = False
        """The bulk delay came from an estimate here (not ``preset()``): worth keeping."""
        self._moves = 0  # consecutive estimates asking for the same move
        self._erle_in = self._erle_out = 0.0
        self._held = 0  # blocks with speaker sound the echo loss has held for
        self._path_moved = False  # set by path_moved() on another thread, taken by process
        self._settle = round(_SETTLE_S * SAMPLE_RATE / self.frame)  # ... must hold for
        self.converged = False
        """The filter cancels the echo: the delay is found and the echo loss is there."""
        self.gate = gate
        self.gated = 0
        """Blocks the convergence gate turned into silence."""
        self._max_delay = SAMPLE_RATE * max(0, max_delay_ms) // 1000
        self.max_delay_ms = max(0, max_delay_ms)
        self._quiet = 1 << 30  # reference samples since the last with speaker sound
        # the speaker's last 2 s beside the tail and the bulk: the reference never falls
        # out of it
        self._far = _FarRing(self.tail + 2 * SAMPLE_RATE + self._latency
                             + SAMPLE_RATE * max(0, max_delay_ms) // 1000)
        self._ref_pos: int | None = None  # the reference sample paired with the next mic
        self._timed = False  # the last report was a timed position (process(timed=))
        self._offsets: collections.deque[int] = collections.deque(maxlen=_ALIGN_WINDOW)
        self._behind = 0  # samples the reference was behind the latest report
        self.bypassed = False
        self._bypass_left = 0
        self.frames = 0  # blocks cancelled
        self.bypassed_frames = 0
        self.realigned = 0  # times the reference was moved to the reported position
        self.paused = 0  # reference samples of silence while the speaker had stalled
        # the last mic blocks and where their references started: a move of the bulk
        # delay replays them through the fresh filter at the new alignment
        self._history: collections.deque[tuple[bytes, int]] = collections.deque(
            maxlen=round(_REPLAY_S * SAMPLE_RATE / self.frame) if max_delay_ms > 0 else 0)
        self._starts: list[int] = []  # the reference's start of each block of this frame
        self.replayed = 0
        """Mic blocks replayed through a fresh filter after a move of the bulk delay."""

    def played(self, pcm: bytes, position: int) -> None:
        """The speaker was given ``pcm`` (24 kHz PCM16 mono), starting at ``position``.

        ``position`` counts every sample handed to the speaker since the canceller was
        made or reset, silence included; positions never reported read as silence.
        """
        if position < 0:
            raise ValueError(f"position must be >= 0, not {position}")
        with self._lock:
            self._far.write(pcm, position)
            if self._estimator is not None:
                self._estimator.far(pcm, position)

    def preset(self, bulk_ms: int) -> None:
        """Start from a bulk delay found before (kept by the daemon across restarts).

        The reference is held back by ``bulk_ms`` at once, so the first reply's echo
        starts where the filter models it: no move, no reset of the filter, once the
        estimator confirms it. It still checks: two estimates in a row elsewhere move it
        (another device, another room). Only with an estimator (``max_delay_ms``).
        """
        if self._estimator is None:
            return
        if not 0 <= bulk_ms <= self.max_delay_ms:
            raise ValueError(f"bulk_ms must be 0..{self.max_delay_ms}, not {bulk_ms}")
        bulk = SAMPLE_RATE * bulk_ms // 1000
        with self._lock:
            if self._ref_pos is not None:
                self._ref_pos -= bulk - self.bulk
            self.bulk, self.bulk_found, self.bulk_estimated = bulk, True, False
            self._moves = 0

    def path_moved(self) -> None:
        """The echo path may have moved (the speaker's timeline had a gap).

        The convergence gate re-arms at the next mic frame. Any thread.
        """
        self._path_moved = True

    def process(self, mic: bytes, played: int, *, timed: bool = False) -> bytes:
        """The mic frame ``mic`` without the echo.

        Args:
            mic: a whole number of blocks of 24 kHz PCM16 mono.
            played: the speaker's position (as given to ``played()``) when ``mic`` was
                read from the device.
            timed: ``played`` is the position *playing* when the frame was captured, on
                a timeline that runs on while the speaker is stopped or starved (its
                positions then jump by the time it played nothing:
                ``audio/pipeline.py`` ``SpeakerMix``); else it is the count handed to
                the speaker, which stands still while the speaker does.
        """
        if not mic or len(mic) % self.frame_bytes:
            raise ValueError(f"mic audio must be a whole number of {self.frame_bytes}-byte "
                             f"blocks, not {len(mic)} bytes")
        blocks = len(mic) // self.frame_bytes
        with self._lock:
            if self._path_moved:
                self._path_moved = False
                self._history.clear()
                self._rearm(_SETTLE_S)
            refs = self._references(blocks, played, timed)
            if self._estimator is not None and refs:
                assert self._ref_pos is not None
                # the mic audio against the speaker's timeline without the bulk shift
                self._estimator.near(mic, self._ref_pos - blocks * self.frame + self.bulk)
                self._until_estimate -= blocks
                if self._until_estimate <= 0:
                    self._until_estimate = self._estimate_frames
                    bulk = self.bulk
                    self._realign(self._estimator.estimate())
                    if self.bulk != bulk:  # this frame's blocks at the new alignment too
                        self._starts = [s - (self.bulk - bulk) for s in self._starts]
                        refs = [self._far.read(s, self.frame) for s in self._starts]
            starts = self._starts
        out = []
        for i, ref in enumerate(refs):
            raw = mic[i * self.frame_bytes:(i + 1) * self.frame_bytes]
            block = self._block(raw, ref)
            if self._history.maxlen:
                self._history.append((raw, starts[i]))
            if self.gate and not self.bypassed and not self.converged and self.echo_possible:
                # this block's own verdict: read later (the event loop's turn, a frame
                # of several blocks) it would be another block's
                self.gated += 1
                block = bytes(len(block))
            out.append(block)
        return b"".join(out)

    def _realign(self, delay: int | None) -> None:
        """Hold the reference back by a new bulk ``delay`` (hold the lock).

        A move is made when two estimates in a row agree on it (one odd estimate, say
        over the user's voice, moves nothing); the filter starts afresh then, since its
        whole echo path moved.
        """
        if delay is None:
            self._moves = 0
            return
        margin = SAMPLE_RATE * _MARGIN_MS // 1000
        bulk = max(0, delay - margin)
        if abs(bulk - self.bulk) < SAMPLE_RATE * _MOVE_MS // 1000:
            # close enough to where the reference stands: no move, and no reset of what
            # the filter has learnt so far (a first estimate of a short path, whose bulk
            # is 0, reset a filter learning since the reply began: 1.5 s more gated)
            self._moves = 0
            if not self.bulk_estimated:
                self.bulk_found = self.bulk_estimated = True
                logger.info("echo delay %d ms: the reference stays where it is",
                            delay * 1000 // SAMPLE_RATE)
            return
        self._moves += 1
        if self._moves < 2 and self.bulk_found:
            return
        assert self._ref_pos is not None
        by = bulk - self.bulk
        self._ref_pos -= by
        self._offsets.clear()
        self.bulk = bulk
        self.bulk_found = self.bulk_estimated = True
        self._moves = 0
        self.realigned += 1
        self._rearm(_SETTLE_S)
        self._aec.reset()
        self._replay(by)
        logger.info("echo delay %d ms: the reference held back %d ms",
                    delay * 1000 // SAMPLE_RATE, bulk * 1000 // SAMPLE_RATE)

    def _replay(self, by: int) -> None:
        """Teach the fresh filter the last mic blocks at the new alignment (hold the lock).

        A filter reset for a move of the bulk delay needs some 2 s of speaker sound to
        cancel 30 dB again, and the first move comes 1-1.5 s into the first reply (the
        estimate needs that much sound): gated all the while. The blocks the old
        alignment spent are in hand (the mic's, and the speaker's in the ring), so the
        new filter learns them at once, as if it had been aligned from their start. Their
        output is not used and not weighed by the convergence gate (it judges live
        blocks only); their cost is outside the bypass's window (a one-off, 2 s of audio
        in 11-12 ms here).
        """
        history = list(self._history)
        self._history.clear()
        for raw, start in history:
            self._aec.run(raw, self._far.read(start - by, self.frame))
        self.replayed += len(history)

    def _references(self, blocks: int, played: int, timed: bool) -> list[bytes]:
        """Speaker samples for the next ``blocks`` mic blocks (hold the lock).

        Mic audio is continuous, so its reference is too: consecutive blocks take
        consecutive speaker samples whatever jitter the reported position has (callbacks
        run early and late, the speaker's position moves a period at a time), because
        every move of the reference is an echo path change the filter must re-learn.

        It starts a block behind the reported position: the echo in a mic block is of
        something played before it. By count (not ``timed``), when it catches up with
        what the speaker has been given, the speaker has stalled (its device plays
        silence: an underrun, or a stopped stream), so the reference gets silence too
        and waits there, as the count does, and resumes with the speaker. Timed, the
        position runs on through a stall and the speaker's next positions jump by it, so
        the reference runs on too, through silence: a pause is silence in the reference,
        not a wait followed by a jump. It moves forward when every report of the last
        ``_ALIGN_WINDOW`` frames left it more than three blocks behind (the speaker's
        clock is faster than the mic's: tail would be wasted), back when every one of
        them had it more than ``_AHEAD_MS`` ahead of the report (it would soon pair the
        mic with sound not played yet, which no filter can use), and to the report at
        once when the position jumps by more than ``_JUMP_S`` (a restarted speaker or
        mic) or the pairing switches between count and time.
        """
        n = blocks * self.frame
        target = played - self._latency - self.bulk - n
        if self._ref_pos is None:
            self._ref_pos = target - self.frame
        elif timed != self._timed:
            self._move_reference(target - self.frame - self._ref_pos)
        else:
            off = target - self._ref_pos
            if abs(off) > _JUMP_S * SAMPLE_RATE:
                self._move_reference(off - self.frame)
            else:
                self._offsets.append(off)
                if len(self._offsets) == self._offsets.maxlen:
                    if min(self._offsets) > 3 * self.frame:
                        self._move_reference(min(self._offsets) - self.frame)
                    elif max(self._offsets) < -SAMPLE_RATE * _AHEAD_MS // 1000:
                        self._move_reference(max(self._offsets) - self.frame)
        self._timed = timed
        self._behind = target - self._ref_pos
        refs = []
        self._starts = []
        for _ in range(blocks):
            start = self._ref_pos
            self._starts.append(start)
            given = max(0, min(self.frame, self._far.end - start))
            step = self.frame if timed else given
            refs.append(self._far.read(start, given) + bytes(BYTES_PER_SAMPLE
                                                             * (self.frame - given)))
            self._ref_pos = start + step
            self.paused += self.frame - given
        return refs

    def _move_reference(self, by: int) -> None:
        """Move the reference ``by`` samples (hold the lock).

        An echo path change to the filter: whether it still cancels is measured again
        (the convergence gate re-arms).
        """
        assert self._ref_pos is not None
        self._ref_pos += by
        self._offsets.clear()
        self._history.clear()  # paired before the echo path moved: nothing to replay
        self.realigned += 1
        self._rearm(_SETTLE_S)
        if guard.should_log("echo reference moved") is not None:
            logger.info("echo reference moved %+d ms to the speaker's position",
                        by * 1000 // SAMPLE_RATE)

    def _rearm(self, settle_s: float) -> None:
        """Close the convergence gate until the echo loss holds ``settle_s``.

        Counted in blocks with speaker sound.
        """
        self.converged = False
        self._erle_in = self._erle_out = 0.0
        self._held = 0
        self._settle = max(1, round(settle_s * SAMPLE_RATE / self.frame))

    def _block(self, mic: bytes, ref: bytes) -> bytes:
        if self.bypassed:
            self.bypassed_frames += 1
            self._bypass_left -= 1
            if self._bypass_left <= 0:
                self._lift_bypass()
            return mic
        t0 = self._clock()
        out = self._aec.run(mic, ref)
        cost = self._clock() - t0
        if envelope(ref) >= 100:
            if self._quiet >= SAMPLE_RATE * _RESUME_S and self.converged:
                # the speaker sounds again after a pause: whether the filter still fits
                # (the echo path may have moved meanwhile) is measured again, gated
                self._rearm(_RECHECK_S)
            self._quiet = 0
        else:
            self._quiet += self.frame
        self._track_erle(mic, ref, out)
        self.frames += 1
        if len(self._costs) == self._costs.maxlen:
            self._cost_sum -= self._costs[0]
        self._costs.append(cost)
        self._cost_sum += cost
        if (len(self._costs) == self._costs.maxlen
                and self._cost_sum / len(self._costs) > self._budget_s):
            self._engage_bypass(self._cost_sum / len(self._costs))
        return out

    def _track_erle(self, mic: bytes, ref: bytes, out: bytes) -> None:
        """The echo loss over blocks with speaker sound: the convergence gate's measure."""
        if envelope(ref) < 100:
            return
        a = _ERLE_SMOOTH
        self._erle_in += a * (envelope(mic) - self._erle_in)
        self._erle_out += a * (envelope(out) - self._erle_out)
        if self.converged or not self.bulk_found:
            return
        if self._erle_in > 0 and self.erle_db() >= _CONVERGED_ERLE_DB:
            self._held += 1
        else:
            self._held = 0
        if self._held >= self._settle:
            self.converged = True
            logger.info("echo cancellation converged (%.0f dB)", self.erle_db())

    @property
    def echo_possible(self) -> bool:
        """Speaker sound was referenced recently enough that its echo may still come."""
        return self._quiet < self.tail + (0 if self.bulk_found else self._max_delay)

    def erle_db(self) -> float:
        """The smoothed echo return loss enhancement while the speaker sounds (0 before)."""
        if self._erle_in <= 0:
            return 0.0
        return 20 * math.log10(self._erle_in / max(self._erle_out, 1e-3))

    def _engage_bypass(self, mean_s: float) -> None:
        self.bypassed = True
        self._bypass_left = self._retry_frames
        reason = (f"echo cancellation costs {mean_s * 1000:.2f} ms per "
                  f"{self.frame * 1000 // SAMPLE_RATE} ms block, over its budget of "
                  f"{self._budget_s * 1000:.2f} ms: bypassed")
        logger.warning("%s", reason)
        if self._on_bypass is not None:
            self._on_bypass(True, reason)

    def _lift_bypass(self) -> None:
        self.bypassed = False
        self._costs.clear()
        self._cost_sum = 0.0
        self._aec.reset()  # the room and the alignment may have changed meanwhile
        reason = "echo cancellation resumed"
        logger.info("%s", reason)
        if self._on_bypass is not None:
            self._on_bypass(False, reason)

    def mean_cost_s(self) -> float:
        """Mean processing time per block over the current window (0 before any)."""
        return self._cost_sum / len(self._costs) if self._costs else 0.0

    def echo_delay_ms(self) -> float:
        """The echo delay the adapted filter found (its strongest tap), in ms.

        Counted behind the reported position less ``latency_ms`` (the reference's own
        margin added back); 0 before the filter has adapted.
        """
        taps = self._aec.impulse_response()
        if not taps or not any(taps):
            return 0.0
        peak = max(range(len(taps)), key=lambda i: abs(taps[i]))
        return (peak + self._behind + self.bulk) * 1000 / SAMPLE_RATE

    def reset(self) -> None:
        """Forget the filter, the speaker history, the alignment and any bypass.

        For a new device, or a restarted speaker whose positions start again at 0.
        """
        with self._lock:
            self._far = _FarRing(self._far.size)
            self._ref_pos = None
            self._offsets.clear()
            self._history.clear()
            if self._estimator is not None:
                self._estimator.reset()
                self.bulk, self.bulk_found, self.bulk_estimated = 0, False, False
            self._until_estimate = self._estimate_frames
            self._rearm(_SETTLE_S)
        self._aec.reset()
        self._costs.clear()
        self._cost_sum = 0.0
        was, self.bypassed = self.bypassed, False
        if was and self._on_bypass is not None:
            self._on_bypass(False, "echo cancellation reset")
