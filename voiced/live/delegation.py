"""Tools through client delegation: which tool a delegation means, its call, its result.

A delegation carries an id and a timeline offset, never the task, so the tool is inferred
from the user's words (:mod:`voiced.live.intents`); its result goes back as
``session.commentary.append`` with the delegation's id; nothing matching within
``delegation_wait_ms`` of timeline is answered with ``no_tool_reply``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from voiced import guard
from voiced.core.effects import CallTool, CancelTool
from voiced.live import intents
from voiced.live import wire as lw
from voiced.live.facts import LiveFacts, Out
from voiced.live.records import Records
from voiced.live.settings import LiveSettings

logger = logging.getLogger("voiced.live.core")

_MAX_CALLS: Final = 16


@dataclass(slots=True)
class Waiting:
    """A client delegation waiting to know which tool it is."""

    offset_ms: int
    deadline_ms: int


class Delegations:
    """The delegations waiting for words and the tool calls running."""

    def __init__(self, facts: LiveFacts, out: Out, records: Records) -> None:
        self.facts = facts
        self.out = out
        self.records = records
        self.intents = intents.intents_for(facts.settings.tools,
                                           dict(facts.settings.tool_keywords))
        self.waiting: dict[str, Waiting] = {}
        self.calls: dict[str, str] = {}  # delegation id → tool name, while it runs

    def set_settings(self, settings: LiveSettings) -> None:
        """New tools or keywords."""
        self.intents = intents.intents_for(settings.tools, dict(settings.tool_keywords))

    def busy(self) -> bool:
        """A delegation waits or a tool runs."""
        return bool(self.calls or self.waiting)

    def instructions(self) -> str:
        """The instructions sent in ``session.start``.

        The settings' instructions, plus a delegation policy naming the tools (the voice
        model has no tool list).
        """
        settings = self.facts.settings
        text = settings.instructions.strip()
        if not (settings.delegation_policy and self.intents):
            return text
        described = {t["name"]: t.get("description", "") for t in settings.tools}
        lines = [f"- {i.name}: {described.get(i.name) or i.name}" for i in self.intents]
        words = ", ".join(dict.fromkeys(k for i in self.intents for k in i.keywords))
        policy = ("Delegation policy: this device can do the following itself. When the "
                  "user asks for one of them, delegate the task to the app and speak its "
                  "answer in your own words; never guess the result.\n" + "\n".join(lines)
                  + f"\nDelegate: {words}")
        return f"{text}\n\n{policy}" if text else policy

    def on_created(self, ev: lw.DelegationCreated, now: float) -> None:
        """``session.delegation.created``: find its tool now or once the words come."""
        if ev.target != "client":
            logger.warning("a %s delegation on a client-delegation session: ignored",
                           guard.printable(ev.target, 40))
            return
        if self.facts.phase != "open" or ev.delegation_id in self.waiting:
            return
        self.facts.last_activity = now
        if len(self.waiting) + len(self.calls) >= _MAX_CALLS:
            self._comment("Too many requests at once; try again.", ev.delegation_id)
            return
        d = Waiting(ev.offset_ms, ev.offset_ms + self.facts.settings.delegation_wait_ms)
        self.waiting[ev.delegation_id] = d
        self._resolve(ev.delegation_id, d, final=False)

    def on_words(self) -> None:
        """The user said more: a waiting delegation may match now."""
        for did, d in list(self.waiting.items()):
            self._resolve(did, d, final=False)

    def on_timeline(self, now_ms: int) -> None:
        """The timeline moved: delegations past their wait are answered."""
        for did, d in list(self.waiting.items()):
            if now_ms >= d.deadline_ms:
                self._resolve(did, d, final=True)

    def _resolve(self, delegation_id: str, d: Waiting, *, final: bool) -> None:
        words = self.records.assembler.user_words(d.deadline_ms)
        found = intents.match(self.intents, words)
        if found is None and not final:
            return
        del self.waiting[delegation_id]
        if found is None:
            self.facts.counters.delegations_unmatched += 1
            logger.info("delegation: no tool for %r", guard.printable(words, 200))
            self._comment(self.facts.settings.no_tool_reply, delegation_id)
            return
        logger.info("delegation: %s (from %r)", found.name, guard.printable(found.keyword, 60))
        self.facts.counters.tool_calls += 1
        self.calls[delegation_id] = found.name
        self.out.emit(CallTool(delegation_id, found.name, found.arguments))

    def on_result(self, call_id: str, output: str, now: float) -> bool:
        """A tool finished: its result goes to the model as the delegation's commentary.

        False when nobody waits for it.
        """
        name = self.calls.pop(call_id, None)
        if name is None:
            logger.debug("result for call %s nobody waits for", call_id)
            return False
        self.facts.last_activity = now
        if self.facts.phase == "open":
            self._comment(f"Result of {name}: {output}", call_id)
        else:
            logger.info("tool %s finished after its session ended; result dropped", name)
        return True

    def session_over(self) -> None:
        """The session ended: running calls are cancelled, waiting ones forgotten."""
        for call_id, name in self.calls.items():
            logger.info("tool %s cancelled: %s", name, "the session ended")
            self.out.emit(CancelTool(call_id))
        self.calls.clear()
        self.waiting.clear()

    def _comment(self, text: str, delegation_id: str) -> None:
        self.out.send(lw.context_append(self.out.eid(), "commentary", text, delegation_id))
