"""The browser client in a real browser: Debian's Chromium, headless, driven by
Playwright, with a fake microphone saying voiced/data/question.wav once; through
`voiced relay` (in-process) to `voiced sim`, with a real PostgreSQL.

What the page shows is read from the DOM (the aria-live status, the transcript lines,
the dialogs); what it sends, from the WebSocket frames the browser reports; what its
playback worklet really played, from the reports the page gets from it (``window.voiced``
events, recorded by an init script); what the relay wrote, from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests import relay_rig
from tests.backends import rows
from tests.browser import browser_context, chromium_path, fake_mic_wav
from tests.conftest import TIMEOUT
from tests.relay_rig import AGENT, device_name, messages, relay_in_process
from voiced.sim.server import SimOptions, SimServer

pytestmark = pytest.mark.skipif(
    chromium_path() is None,
    reason="Chromium is not installed (scripts/setup.sh test installs Debian's chromium)")

pg = relay_rig.pg  # one PostgreSQL per module

READY = "Connected. Press the mic to talk."
LONG_REPLY = ("It is a quarter past three in the afternoon, and the sun is still high over "
              "the hills, so there is plenty of daylight left for a walk along the river "
              "before dinner, and the forecast says it will stay dry until late tonight.")
RATE = 24_000

# Runs before the page's own scripts (init scripts are exempt from its CSP): records
# every text the aria-live status shows, and the client's events once app.js sets
# window.voiced.
RECORDER = """
window.__states = [];
window.__events = [];
new MutationObserver(() => {
  const el = document.getElementById("status");
  if (el && window.__states[window.__states.length - 1] !== el.textContent) {
    window.__states.push(el.textContent);
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
let client = null;
Object.defineProperty(window, "voiced", {
  configurable: true,
  get() { return client; },
  set(v) {
    client = v;
    for (const t of ["played", "interrupted", "conversation", "closed", "state"]) {
      v.addEventListener(t, (e) => window.__events.push({ event: t, ...e.detail }));
    }
  },
});
"""


class Page:
    """One tab of the page, with what it sent and received over its WebSockets."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.sockets: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.errors: list[str] = []
        page.on("websocket", self._socket)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)

    def _socket(self, ws: Any) -> None:
        self.sockets.append(ws.url)
        ws.on("framesent", lambda f: self.sent.append(json.loads(f)))
        ws.on("framereceived", lambda f: self.received.append(json.loads(f)))

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.sent if e["type"] == kind]

    async def states(self) -> list[str]:
        return list(await self.page.evaluate("window.__states"))

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        evs: list[dict[str, Any]] = await self.page.evaluate("window.__events")
        return [e for e in evs if kind is None or e["event"] == kind]

    async def until(self, what: str, pred: Any, within_s: float = TIMEOUT) -> Any:
        """Poll ``await pred()`` until it is truthy (bounded)."""
        deadline = time.monotonic() + within_s
        while True:
            got = await pred()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; states "
                                     f"{await self.states()}; errors {self.errors}")
            await asyncio.sleep(0.05)

    async def status(self, text: str, within_s: float = TIMEOUT) -> None:
        from playwright.async_api import expect

        await expect(self.page.locator("#status")).to_have_text(text,
                                                                timeout=within_s * 1000)

    async def played(self, item: str | None = None) -> int:
        """The most the playback worklet has reported playing (of ``item``)."""
        return max([e["played"] for e in await self.events("played")
                    if e.get("played") is not None and (item is None or e["item"] == item)],
                   default=0)


@asynccontextmanager
async def rig(tmp_path: Path, pg: str, *, say: str | None = None, pace: float = 1.0,
              mic: bool = True, **ctx_kw: Any) -> AsyncIterator[tuple[Any, Any, Any]]:
    """voiced sim, the relay in-process, and a fresh Chromium profile."""
    agent = {**AGENT, **({"instructions": f"Say: {say}"} if say else {})}
    wav = fake_mic_wav(tmp_path / "mic.wav") if mic else None
    async with SimServer(SimOptions(pace=pace, transcript="what time is it")) as sim, \
            relay_in_process(tmp_path, sim.url, pg, agents=[agent]) as relay, \
            browser_context(tmp_path / "profile", mic_wav=wav, **ctx_kw) as ctx:
        await ctx.add_init_script(RECORDER)
        yield sim, relay, ctx


async def open_with_token(ctx: Any, relay: Any, token: str) -> Page:
    """The page with ``token`` already in its localStorage, connected and ready."""
    page = Page(await ctx.new_page())
    await page.page.goto(relay.page_url)
    await page.page.evaluate("t => localStorage.setItem('voiced.token', t)", token)
    await page.page.reload()
    await page.status(READY)
    return page


def audio_bytes(page: Page, item: str) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in page.received
               if e["type"] == "response.output_audio.delta" and e["item_id"] == item)


# ------------------------------------------------------------------ the exchange


async def test_a_spoken_exchange_then_a_reconnect_into_the_same_conversation(
        tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg) as (sim, relay, ctx):
        name = device_name()
        token = await relay.store.add_device(name)
        page = Page(await ctx.new_page())
        p = page.page
        await p.goto(relay.page_url)
        # no token yet: the page asks for one, once; a wrong one is refused
        dialog = p.locator("#token-dialog")
        await page.status("This browser needs a device token.")
        assert await dialog.get_attribute("open") is not None
        await p.locator("#token").fill("vrt_not-a-real-token")
        await p.locator("#token").press("Enter")
        await page.status("The relay refused this token.")
        assert (await p.locator("#token-error").text_content()).startswith(
            "The relay refused this token: check it")
        await p.locator("#token").fill(token)
        await p.locator("#token-save").click()
        await page.status(READY)
        assert await p.evaluate("localStorage.getItem('voiced.token')") == token
        assert [o for o in await p.locator("#voice option").all_text_contents()] == [
            "Marin", "Cedar"]

        # the mic button by keyboard: Space toggles streaming
        mic = p.locator("#mic")
        await mic.focus()
        await p.keyboard.press("Space")
        await page.status("Listening…")
        assert await mic.get_attribute("aria-pressed") == "true"
        assert await mic.get_attribute("aria-label") == "Stop talking"
        await page.status("Speaking…", within_s=TIMEOUT * 2)
        await page.status("Listening…", within_s=TIMEOUT * 2)
        assert await page.states() == [
            "Connecting…", "This browser needs a device token.", "Connecting…",
            "The relay refused this token.", "Connecting…", READY, "Listening…",
            "Speaking…", "Listening…"]
        lines = await p.locator("#lines li").all_text_contents()
        assert lines == ["You:what time is it", "Assistant:You said: what time is it"]

        # the conversation the relay created, adopted by the page, and its rows
        created = [e for e in page.received if e["type"] == "conversation_created"]
        assert len(created) == 1
        cid = created[0]["conversation_id"]
        assert await p.evaluate("voiced.conversationId") == cid
        assert await p.evaluate("sessionStorage.getItem('voiced.conversation.home')") == cid
        assert rows(pg, f"select agent_id, device_id from conversations where id = '{cid}'") \
            == [("home", name)]
        (_, role1, text1, md1), (_, role2, text2, md2) = messages(pg, cid)
        assert (role1, text1) == ("user", "what time is it")
        assert md1["input_method"] == "realtime_voice"
        assert (role2, text2) == ("assistant", "You said: what time is it")
        assert md2["voice"] == "marin" and md2["interrupted"] is False
        item = md2["item_id"]
        # everything the page received of the reply, it played
        assert await page.played(item) * 2 == audio_bytes(page, item) > 0
        # audio went up as 20 ms PCM16 appends
        appends = page.sent_of("input_audio_buffer.append")
        assert appends and {len(base64.b64decode(a["audio"])) for a in appends} == {960}

        # the transcript view: the whole conversation, from the database
        await p.locator("#history").click()
        await page.until("the transcript view", lambda: p.locator("#history-list li").count())
        items = await p.locator("#history-list li").all_text_contents()
        assert len(items) == 2
        assert items[0].startswith("You:what time is it")
        assert items[1].startswith("Assistant:You said: what time is it")
        assert await p.locator("#history-status").text_content() == "2 messages"
        await p.keyboard.press("Escape")
        assert await p.locator("#history-dialog").get_attribute("open") is None

        # the relay drops the connection: the page comes back into the same conversation
        for b in list(relay.bridges):
            await b.conn.close(1001, "relay stopping")
        await page.status("Reconnecting…")
        await page.status("Listening…")  # still streaming
        assert len(page.sockets) == 2 and f"conversation_id={cid}" in page.sockets[1]
        assert "conversation_id" not in page.sockets[0]
        assert len([e for e in page.received if e["type"] == "conversation_created"]) == 1
        assert [b.cid for b in relay.bridges] == [cid]
        # and talks on in it: the fake microphone says the question again when reopened
        await mic.click()
        await mic.click()
        await page.status("Speaking…", within_s=TIMEOUT * 2)
        await page.status("Listening…", within_s=TIMEOUT * 2)
        await page.until("four rows", lambda: asyncio.sleep(0, len(messages(pg, cid)) == 4))
        assert [r[1] for r in messages(pg, cid)] == ["user", "assistant"] * 2
        assert rows(pg, f"select count(*) from conversations where device_id = '{name}'") \
            == [(1,)]
        # the one console error is the browser's own note of the refused token's 401
        assert page.errors == ["Failed to load resource: the server responded with a status "
                               "of 401 (Unauthorized)"]


# ------------------------------------------------------------------ interrupting


async def interrupt_rig_ready(page: Page) -> str:
    """Start talking; wait until a long reply has played for half a second."""
    await page.page.locator("#mic").click()
    await page.status("Speaking…", within_s=TIMEOUT * 2)
    starts = await page.until("the reply's first sample",
                              lambda: page.events("played"))
    item = next(e["item"] for e in starts if e["type"] == "start")
    await page.until("half a second played", lambda: _played_at_least(page, item, RATE // 2))
    return item


async def _played_at_least(page: Page, item: str, samples: int) -> bool:
    return await page.played(item) >= samples


async def check_truncation(page: Page, sim: Any, pg: str, item: str, source: str) -> int:
    """The truncation the page sent is what its playback worklet played; the row says so."""
    truncs = page.sent_of("conversation.item.truncate")
    assert len(truncs) == 1, truncs
    t = truncs[0]
    flushed = [e for e in await page.events("played") if e["type"] == "flushed"]
    (interrupted,) = await page.events("interrupted")
    assert interrupted["source"] == source
    f = next(e for e in flushed if e["item"] == item)
    assert (t["item_id"], t["content_index"]) == (item, 0)
    # audio_end_ms is the worklet's own count of samples handed to the audio graph
    assert t["audio_end_ms"] == f["played"] * 1000 // RATE == interrupted["audio_end_ms"]
    progress = [e["played"] for e in await page.events("played")
                if e["type"] == "progress" and e["item"] == item]
    assert progress and max(progress) <= f["played"]  # reports only ever grow
    # interrupted mid-reply: it had played half a second, and not all it had received
    # (the simulator sends at twice real time: the page holds what it has not played yet)
    assert RATE // 2 <= f["played"] < audio_bytes(page, item) // 2
    # playback stopped at once: nothing of that item played after the flush
    evs = await page.events("played")
    after = evs[evs.index(next(e for e in evs if e["type"] == "flushed")) + 1:]
    assert not [e for e in after if e.get("item") == item and e["type"] != "flushed"]
    # upstream got the same truncation, and the relay marked the row with it
    got = [e for s in sim.sessions for e in s.received
           if e["type"] == "conversation.item.truncate"]
    assert [e["audio_end_ms"] for e in got] == [t["audio_end_ms"]]
    cid = await page.page.evaluate("voiced.conversationId")

    async def row() -> Any:
        found = [r for r in messages(pg, cid) if r[3].get("item_id") == item]
        return found and found[0][3].get("heard_ms") is not None and found[0]

    found = await page.until("the interrupted row", row)
    assert found[3]["interrupted"] is True and found[3]["heard_ms"] == t["audio_end_ms"]
    return int(t["audio_end_ms"])


async def test_the_button_interrupts_at_the_position_the_page_really_played(
        tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg, say=LONG_REPLY, pace=2) as (sim, relay, ctx):
        page = await open_with_token(ctx, relay, await relay.store.add_device(device_name()))
        item = await interrupt_rig_ready(page)
        stop = page.page.locator("#stop")
        assert await stop.is_visible()
        assert await stop.get_attribute("aria-label") == "Interrupt the assistant"
        await stop.focus()
        await page.page.keyboard.press("Enter")  # keyboard operable
        await page.status("Listening…")
        await check_truncation(page, sim, pg, item, "button")
        # the reply was still being made: the button cancelled it too
        assert len(page.sent_of("response.cancel")) == 1
        done = await page.until("response.done", lambda: asyncio.sleep(0, [
            e for e in page.received if e["type"] == "response.done"]))
        assert done[-1]["response"]["status"] == "cancelled"
        assert await stop.is_hidden()
        assert page.errors == []


async def test_speaking_over_the_reply_interrupts_it(tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg, say=LONG_REPLY, pace=2) as (sim, relay, ctx):
        page = await open_with_token(ctx, relay, await relay.store.add_device(device_name()))
        item = await interrupt_rig_ready(page)
        # the fake microphone says the question again when it is reopened: over the reply
        mic = page.page.locator("#mic")
        await mic.click()
        await mic.click()
        await page.until("the interruption", lambda: page.events("interrupted"))
        await check_truncation(page, sim, pg, item, "voice")
        # the server's VAD cancelled the reply itself; the page sent no cancel of its own
        assert page.sent_of("response.cancel") == []
        speech = [i for i, e in enumerate(page.received)
                  if e["type"] == "input_audio_buffer.speech_started"]
        assert len(speech) == 2  # the question, then the words over the reply
        states = await page.states()
        assert states[:5] == ["Connecting…", READY, "Listening…", "Speaking…", "Listening…"]
        assert page.errors == []


# ------------------------------------------------------------------ the rest of the page


async def test_voice_picker_forget_and_revoke(tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg, mic=False) as (_sim, relay, ctx):
        name = device_name()
        page = await open_with_token(ctx, relay, await relay.store.add_device(name))
        p = page.page
        cid = await page.until("the conversation id", lambda: p.evaluate("voiced.conversationId"))
        # another voice: the same conversation, reopened with ?voice=cedar
        await p.locator("#voice").select_option("cedar")
        await page.status(READY)
        await page.until("a second socket", lambda: asyncio.sleep(0, len(page.sockets) == 2))
        assert "voice=cedar" in page.sockets[1] and f"conversation_id={cid}" in page.sockets[1]
        await page.until("the cedar session", lambda: asyncio.sleep(0, [
            b for b in relay.bridges if b.acc.voice == "cedar"]))
        assert await p.evaluate("localStorage.getItem('voiced.voice')") == "cedar"
        # revoked while connected: the relay closes it (1008), the page asks for a token
        await relay.store.revoke_device(name)
        assert await relay.close_revoked() == 1
        await page.status("The relay refused this token.")
        assert await p.locator("#token-dialog").get_attribute("open") is not None
        assert await p.locator("#mic").is_disabled()
        # forget: the token leaves localStorage
        await p.locator("#token").press("Escape")  # a stored token: the dialog may close
        await p.locator("#forget").click()
        assert await p.evaluate("localStorage.getItem('voiced.token')") is None
        assert await p.locator("#token-dialog").get_attribute("open") is not None
        assert page.errors == ["Failed to load resource: the server responded with a status "
                               "of 401 (Unauthorized)"]  # the revoked token, asked about


async def test_labels_focus_reduced_motion_and_a_phone_sized_screen(
        tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg, mic=False, viewport=(390, 844),
                   reduced_motion=True) as (_sim, relay, ctx):
        page = await open_with_token(ctx, relay, await relay.store.add_device(device_name()))
        p = page.page
        status = p.locator("#status")
        assert (await status.get_attribute("role"), await status.get_attribute("aria-live")) \
            == ("status", "polite")
        assert await p.locator("#mic").get_attribute("aria-label") == "Start talking"
        assert await p.locator("label[for=voice]").text_content() == "Voice"
        assert await p.get_by_role("button", name="Start talking").count() == 1
        assert await p.get_by_role("combobox", name="Voice").count() == 1
        # keyboard focus is visible
        await p.locator("#forget").focus()
        await p.keyboard.press("Tab")
        assert await p.evaluate("document.activeElement.id") == "mic"
        outline = await p.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"
        # reduced motion: no pulse, no scaling with the sound level
        anim = await p.evaluate("getComputedStyle(document.getElementById('orb')).animationName")
        assert anim == "none"
        assert await p.evaluate("voiced.dispatchEvent(new CustomEvent('level', "
                                "{detail: {value: 1}})) && getComputedStyle(document"
                                ".getElementById('orb')).getPropertyValue('--level')") == "0"
        # everything fits a phone's screen
        for sel in ("#orb", "#status", "#mic", "#voice", "#history", "#forget"):
            box = await p.locator(sel).bounding_box()
            assert box is not None and box["x"] >= 0 and box["y"] >= 0, sel
            assert box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, sel
        assert page.errors == []


WORKLETS_AT_48K = """
async () => {
  const rate = 48000;
  // capture: a 1 kHz tone at 48 kHz in, 20 ms frames of 24 kHz PCM16 out
  const ctx = new OfflineAudioContext({ numberOfChannels: 1, length: rate / 2, sampleRate: rate });
  await ctx.audioWorklet.addModule(new URL("capture-worklet.js", location.href));
  const frames = [];
  const cap = new AudioWorkletNode(ctx, "voiced-capture", { numberOfInputs: 1,
    numberOfOutputs: 0, processorOptions: { targetRate: 24000, frameMs: 20 } });
  cap.port.onmessage = (e) => frames.push(Array.from(new Int16Array(e.data.pcm)));
  const osc = new OscillatorNode(ctx, { frequency: 1000 });
  const gain = new GainNode(ctx, { gain: 0.5 });
  osc.connect(gain).connect(cap);
  osc.start();
  await ctx.startRendering();
  const until = async (pred) => {  // bounded by the test's own timeout
    while (!pred()) await new Promise((ok) => setTimeout(ok, 20));
  };
  await until(() => frames.length >= 25);
  // playback: 200 ms of a 24 kHz 1 kHz tone in, 48 kHz out, and what it says it played
  const out = new OfflineAudioContext({ numberOfChannels: 1, length: rate / 2, sampleRate: rate });
  await out.audioWorklet.addModule(new URL("playback-worklet.js", location.href));
  const reports = [];
  const play = new AudioWorkletNode(out, "voiced-playback", { numberOfInputs: 0,
    numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { sourceRate: 24000 } });
  play.port.onmessage = (e) => reports.push(e.data);
  play.connect(out.destination);
  const pcm = new Int16Array(4800);
  for (let i = 0; i < pcm.length; i++) {
    pcm[i] = Math.round(16000 * Math.sin(2 * Math.PI * 1000 * i / 24000));
  }
  play.port.postMessage({ type: "chunk", item: "item_x", pcm: pcm.buffer }, [pcm.buffer]);
  play.port.postMessage({ type: "end" });
  play.port.postMessage({ type: "ping", seq: 1 });
  // offline rendering outruns message delivery: pause early until the chunk is in
  out.suspend(1024 / rate).then(async () => {
    await until(() => reports.some((r) => r.type === "pong"));
    out.resume();
  });
  const rendered = await out.startRendering();
  await until(() => reports.some((r) => r.type === "idle"));
  return { frames, reports, output: Array.from(rendered.getChannelData(0)) };
}
"""


def crossings(xs: list[float]) -> int:
    return sum(1 for a, b in zip(xs, xs[1:], strict=False) if a < 0 <= b)


async def test_the_worklets_resample_when_the_context_is_not_at_24_khz(
        tmp_path: Path, pg: str) -> None:
    async with rig(tmp_path, pg, mic=False) as (_sim, relay, ctx):
        page = Page(await ctx.new_page())
        await page.page.goto(relay.page_url)
        got = await page.page.evaluate(WORKLETS_AT_48K)
        # capture: 0.5 s at 48 kHz is 25 frames of 480 samples at 24 kHz, still 1 kHz
        frames = got["frames"]
        assert len(frames) == 25 and {len(f) for f in frames} == {480}
        pcm = [s for f in frames for s in f]
        assert 495 <= crossings(pcm) <= 501  # 1 kHz for 0.5 s
        assert 15_000 < max(pcm[480:]) <= 16_384  # the tone's level, kept
        # playback: 4800 samples at 24 kHz are 9600 at 48 kHz, then silence; 1 kHz
        out = got["output"]
        sound = [i for i, v in enumerate(out) if abs(v) > 1e-4]
        assert 9500 <= sound[-1] - sound[0] + 1 <= 9700
        assert 196 <= crossings(out[sound[0]:sound[-1] + 1]) <= 201
        assert 0.45 < max(out) < 0.5
        idle = [r for r in got["reports"] if r["type"] == "idle"]
        assert idle == [{"type": "idle", "item": "item_x", "played": 4800}]
        assert page.errors == []
