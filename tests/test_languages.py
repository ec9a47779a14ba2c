"""Languages beyond English: settings pass through, Unicode reaches every sink unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.backends import FlakyWebhook
from tests.test_supervisor import roles, running
from voiced import config
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer

GERMAN = "Wie spät ist es? Grüße aus München – bitte antworte kurz."
JAPANESE = "今何時ですか？東京の天気も教えてください。"
EXAMPLES = Path(__file__).parent.parent / "config"


@pytest.mark.parametrize("said", [GERMAN, JAPANESE])
async def test_non_ascii_transcripts_reach_the_jsonl_file_unchanged(tmp_path: Path,
                                                                   said: str) -> None:
    async with SimServer(SimOptions(pace=4, transcript=said)) as sim:
        async with running(tmp_path, sim, speed=4, realtime={
                "instructions": "Du bist ein hilfsbereiter Sprachassistent. Antworte auf "
                                "Deutsch.",
                "transcription": {"language": "de", "model": "gpt-4o-transcribe",
                                  "prompt": "Küche, Wohnzimmer, München"}}) as h:
            await h.wait(lambda: h.state == State.READY)
            h.sup._on_control("press")
            await h.wait(lambda: roles(h) == ["user", "assistant"])
            await h.sup.outbox.flush()  # type: ignore[union-attr]
            await h.wait(lambda: h.sup.outbox.pending == 0)  # type: ignore[union-attr]
            session = sim.sessions[0].session
            assert session["audio"]["input"]["transcription"] == {
                "model": "gpt-4o-transcribe", "language": "de",
                "prompt": "Küche, Wohnzimmer, München"}
            assert session["instructions"].startswith("Du bist")
    raw = (tmp_path / "t.jsonl").read_bytes()
    assert said.encode("utf-8") in raw  # written as UTF-8, not as \\u escapes
    texts = [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines()]
    assert texts == [said, f"You said: {said}"]


async def test_non_ascii_transcripts_reach_the_webhook_unchanged(tmp_path: Path) -> None:
    hook = FlakyWebhook(fail=0, slow=0, drop=0)
    url = await hook.start()
    try:
        said = f"{GERMAN} {JAPANESE}"
        async with SimServer(SimOptions(pace=4, transcript=said)) as sim:
            async with running(tmp_path, sim, speed=4,
                               transcripts={"sink": "webhook", "webhook": {"url": url}}) as h:
                await h.wait(lambda: h.state == State.READY)
                h.sup._on_control("press")
                await h.wait(lambda: roles(h) == ["user", "assistant"])
                await h.wait(lambda: len(hook.records) == 2)
        texts = sorted(r["text"] for r in hook.records.values())
        assert texts == [said, f"You said: {said}"]
    finally:
        await hook.stop()


def test_the_non_english_example_config_validates() -> None:
    settings = config.load(EXAMPLES / "voiced.example-de.yaml",
                           environ={"OPENAI_API_KEY": "sk-test"})
    assert settings.realtime.transcription.language == "de"
    assert settings.tools.timezone == "Europe/Berlin"
    assert "Deutsch" in settings.realtime.instructions
