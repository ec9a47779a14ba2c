#!/usr/bin/env python3
"""Screenshots of the browser client in each state, for the README (re-runnable).

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Runs what the browser tests run (tests/browser.py): a throwaway PostgreSQL, `voiced
sim`, `voiced relay` in this process and Debian's Chromium with a fake microphone
saying voiced/data/question.wav, then saves token.png, connecting.png, ready.png,
listening.png, speaking.png, transcript.png (1000x760) and phone.png (390x844, speaking).
"Connecting…" is held still by an upstream that accepts and never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.backends import postgres  # noqa: E402
from tests.browser import browser_context, fake_mic_wav, why_no_browser  # noqa: E402
from tests.relay_rig import AGENT, relay_in_process  # noqa: E402
from voiced.sim.server import SimOptions, SimServer  # noqa: E402

REPLY = ("It is a quarter past three in the afternoon, and the sun is still high over the "
         "hills, so there is plenty of daylight left for a walk.")
DESKTOP = (1000, 760)
PHONE = (390, 844)


async def _status(page: object, text: str, within_s: float = 40) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#status")).to_have_text(  # type: ignore[attr-defined]
        text, timeout=within_s * 1000)


async def _open(ctx: object, url: str, token: str) -> object:
    page = await ctx.new_page()  # type: ignore[attr-defined]
    await page.goto(url)
    await page.evaluate("t => localStorage.setItem('voiced.token', t)", token)
    await page.reload()
    return page


async def _hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # an upstream that never answers the handshake


async def shoot(out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    agent = {**AGENT, "instructions": f"Say: {REPLY}"}
    wav = fake_mic_wav(work / "mic.wav")
    with postgres(work / "pg") as dsn:
        hang = await asyncio.start_server(_hang, "127.0.0.1", 0)
        hang_url = f"ws://127.0.0.1:{hang.sockets[0].getsockname()[1]}/v1/realtime"
        async with relay_in_process(work, hang_url, dsn, name="hang.yaml",
                                    agents=[agent]) as relay, \
                browser_context(work / "p0", viewport=DESKTOP) as ctx:
            token = await relay.store.add_device("screenshots")
            page = await ctx.new_page()
            await page.goto(relay.page_url)
            await _status(page, "This browser needs a device token.")
            await page.locator("#token").fill("vrt_" + "x" * 20)
            await page.screenshot(path=str(out / "token.png"))
            page = await _open(ctx, relay.page_url, token)
            await _status(page, "Connecting…")
            await asyncio.sleep(0.8)
            await page.screenshot(path=str(out / "connecting.png"))
        hang.close()

        async with SimServer(SimOptions(pace=1, transcript="what time is it")) as sim, \
                relay_in_process(work, sim.url, dsn, agents=[agent]) as relay:
            token = await relay.store.add_device("screenshots-2")
            async with browser_context(work / "p1", mic_wav=wav, viewport=DESKTOP) as ctx:
                page = await _open(ctx, relay.page_url, token)
                await _status(page, "Connected. Press the mic to talk.")
                await asyncio.sleep(0.8)  # the orb's transition
                await page.screenshot(path=str(out / "ready.png"))
                await page.locator("#mic").click()
                await _status(page, "Listening…")
                await asyncio.sleep(1.2)  # into the question: the orb follows the voice
                await page.screenshot(path=str(out / "listening.png"))
                await _status(page, "Speaking…")
                await asyncio.sleep(2.5)
                await page.screenshot(path=str(out / "speaking.png"))
                await _status(page, "Listening…")
                await page.locator("#mic").click()  # a second question, for the transcript
                await page.locator("#mic").click()
                await _status(page, "Speaking…")
                await _status(page, "Listening…")
                await page.locator("#mic").click()
                await page.locator("#history").click()
                await page.locator("#history-list li").nth(3).wait_for()
                await page.screenshot(path=str(out / "transcript.png"))
            async with browser_context(work / "p2", mic_wav=wav, viewport=PHONE) as ctx:
                page = await _open(ctx, relay.page_url, token)
                await _status(page, "Connected. Press the mic to talk.")
                await page.locator("#mic").click()
                await _status(page, "Speaking…")
                await asyncio.sleep(2.5)
                await page.screenshot(path=str(out / "phone.png"))
    for p in sorted(out.glob("*.png")):
        print(p.relative_to(REPO) if p.is_relative_to(REPO) else p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = ap.parse_args()
    why = why_no_browser()
    if why is not None:
        print(f"screenshots: {why}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="voiced-shots-") as work:
        asyncio.run(shoot(args.out.resolve(), Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
