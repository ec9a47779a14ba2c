"""`voiced demo`: the whole product with no hardware, no key and no network.

Starts the simulator on a free loopback port, runs the real daemon pipeline against it
with the file audio backend (the shipped spoken question as the mic, a WAV as the
speaker), presses the button, and prints the conversation as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from voiced import config, guard
from voiced.core.effects import State
from voiced.sim.server import SimServer
from voiced.supervisor.daemon import Supervisor

DEMO_TIMEOUT_S = 30.0
DEMO_BUTTON_PIN = "17"
DEMO_LED_PINS = ("5", "6", "13")


async def press(pin: Any, hold_s: float = 0.15) -> None:
    """A short press on a mock pin (the button pulls the pin low)."""
    pin.drive_low()
    await asyncio.sleep(hold_s)
    pin.drive_high()


def demo_question() -> Path:
    """The shipped WAV: "What is the weather like today?" (espeak-ng, 22.05 kHz)."""
    return Path(str(resources.files("voiced") / "data" / "question.wav"))


async def run_demo(out_dir: Path | None = None, *, debug: bool = False,
                   api: str = "realtime") -> int:
    """Run one spoken exchange; return 0 when it completed within the time limit.

    ``api``: ``realtime`` (the simulator's Realtime endpoint) or ``live`` (its GPT-Live
    endpoint: the session opens at the press and is closed at the end).
    """
    guard.setup_logging(logging.DEBUG if debug else logging.WARNING)
    out = out_dir or Path(tempfile.mkdtemp(prefix="voiced-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    reply_wav = out / "reply.wav"
    transcripts = out / "transcripts.jsonl"
    async with SimServer() as sim:
        settings = config.parse({
            "device_id": "demo",
            "realtime": {"url": sim.url, "api": api, "live": {"url": sim.live_url}},
            "audio": {"backend": "file", "input": {"file": str(demo_question())},
                      "output": {"file": str(reply_wav)}},
            "transcripts": {"sink": "jsonl", "jsonl": {"path": str(transcripts)},
                            "outbox_dir": str(out / "outbox")},
            "control": {"socket": str(out / "control.sock")},
            "button": {"pin": DEMO_BUTTON_PIN},
            "leds": {"driver": "gpio", "kind": "rgb", "pins": list(DEMO_LED_PINS)},
        }, environ={"OPENAI_API_KEY": "sk-sim-demo"} if api == "live" else {})
        # (the simulator's Live endpoint wants a bearer, any one: the service's refusal
        # of a missing key is not known, so it refuses at the upgrade)
        # NOTE: gpiozero's mock pins stand in for the button and an RGB LED
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        pins = MockFactory(pin_class=MockPWMPin)
        button_pin = pins.pin(int(DEMO_BUTTON_PIN))
        print(f"voiced demo: simulator at {sim.live_url if api == 'live' else sim.url} "
              f"({api}); the mic is {demo_question().name}")
        done = asyncio.Event()
        seen: dict[str, Any] = {"pressed": False, "assistant": False, "state": None}
        sup: Supervisor

        def listen(kind: str, data: Any) -> None:
            if kind == "state":
                if data == seen["state"]:
                    return
                seen["state"] = data
                p = settings.leds.patterns[str(data)]
                print(f"  [{data}]  orb: {p.effect} rgb{p.color}", flush=True)
                if data == State.READY and not seen["pressed"]:
                    seen["pressed"] = True
                    print("  (pressing the button)", flush=True)
                    presses.append(asyncio.ensure_future(press(button_pin)))
                elif data in (State.LISTENING, State.READY) and seen["assistant"]:
                    done.set()
            elif kind == "record":
                who = "you" if data["role"] == "user" else "assistant"
                print(f"{who:>9}: {data['text']}", flush=True)
                if data["role"] == "assistant":
                    seen["assistant"] = True
                    # a Live assistant record waits for its audio to play out, so the
                    # state may already be back at listening
                    if seen["state"] in (State.LISTENING, State.READY):
                        done.set()

        presses: list[asyncio.Future[None]] = []
        sup = Supervisor(settings, listener=listen, pin_factory=pins)
        task = asyncio.create_task(sup.run())
        try:
            await asyncio.wait_for(done.wait(), DEMO_TIMEOUT_S)
            # the transcripts go through the outbox: let it deliver before stopping
            if sup.outbox is not None:
                await asyncio.wait_for(sup.outbox.idle.wait(), 5)
            if api == "live":
                st = sup.status()
                print(f"voiced demo: {st['sessions']} Live session(s), "
                      f"{st['billed_minutes']} minute(s) billed", flush=True)
        except TimeoutError:
            print(f"voiced demo: no complete exchange within {DEMO_TIMEOUT_S:.0f} s",
                  file=sys.stderr)
            return 1
        finally:
            sup.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
    print(f"voiced demo: the reply audio is in {reply_wav}")
    print(f"voiced demo: the transcripts are in {transcripts}")
    return 0
