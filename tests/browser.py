"""A real browser for the page's tests and the screenshots: Debian's Chromium, headless,
driven by Playwright for Python (never ``playwright install``: it is pointed at the
system's binary), with a fake microphone that plays a WAV once."""

from __future__ import annotations

import contextlib
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import QUESTION_WAV
from voiced.audio.filebackend import read_wav_as_wire

RATE = 24_000


def chromium_path() -> str | None:
    """The system Chromium, or None (scripts/setup.sh test installs it)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def why_no_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if chromium_path() is None:
        return "Chromium is not installed (scripts/setup.sh test installs Debian's chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the test extra: pip install -e '.[test]')"
    return None


def fake_mic_wav(path: Path, *, lead_s: float = 0.3, tail_s: float = 8.0,
                 speech: bytes | None = None) -> Path:
    """A 24 kHz mono WAV: a little quiet, the question, then silence (the fake mic)."""
    pcm = speech if speech is not None else read_wav_as_wire(QUESTION_WAV)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(int(RATE * lead_s) * 2) + pcm + bytes(int(RATE * tail_s) * 2))
    return path


def launch_args(mic_wav: Path | None) -> list[str]:
    """Chromium's flags: headless as root, no network of its own, a fake microphone."""
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required"]
    if mic_wav is not None:
        # %noloop: the file is said once, then the microphone is silent
        args.append(f"--use-file-for-fake-audio-capture={mic_wav}%noloop")
    return args


@contextlib.asynccontextmanager
async def browser_context(profile: Path, *, mic_wav: Path | None = None,
                          viewport: tuple[int, int] = (1000, 760),
                          reduced_motion: bool = False,
                          **kw: Any) -> AsyncIterator[Any]:
    """A fresh Chromium profile (``profile`` must not exist yet) as a Playwright context."""
    from playwright.async_api import async_playwright

    exe = chromium_path()
    assert exe is not None, why_no_browser()
    async with async_playwright() as p:
        ctx = await p.chromium.launch_persistent_context(
            str(profile), executable_path=exe, headless=True, args=launch_args(mic_wav),
            viewport={"width": viewport[0], "height": viewport[1]},
            reduced_motion="reduce" if reduced_motion else "no-preference",
            timeout=30_000, **kw)
        try:
            yield ctx
        finally:
            await ctx.close()
