"""The tool-call ledger: which calls run, their outputs, and when to ask for the answer.

The core decides *when*; the supervisor runs *what* (:class:`~voiced.core.effects.
CallTool`, answered with ``on_tool_result``). Every call the model makes gets an output,
whatever happens: one from a response the user interrupted, or beyond
:data:`MAX_CALLS` at once, is answered with an error and never run; a cancelled one is
answered ``cancelled``. One ``response.create`` asks for the spoken answer once every
call of the response has its output and no response is active.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass
from typing import Final

from voiced import guard, wire
from voiced.core.effects import CallTool, CancelTool
from voiced.core.emitter import Emitter
from voiced.core.facts import Facts

logger = logging.getLogger("voiced.core")

MAX_CALLS: Final = 16  # tool calls running at once; more are answered with an error
_SEEN_MEMORY: Final = 256  # call ids remembered to dedupe a call reported twice
_CANCELLED: Final = '{"error": "cancelled: the user interrupted before it finished"}'
_TOO_MANY_CALLS: Final = '{"error": "too many tool calls at once; try fewer"}'


@dataclass(slots=True)
class Call:
    """A tool call in flight, until its answer has been asked for."""

    response_id: str
    name: str
    output: str | None = None


class Calls:
    """The tool calls of the current response."""

    def __init__(self, facts: Facts, out: Emitter) -> None:
        self.facts = facts
        self.out = out
        self.calls: dict[str, Call] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()  # dedupe by call_id

    def running(self) -> bool:
        """Some call has no output yet."""
        return any(c.output is None for c in self.calls.values())

    def running_names(self) -> str:
        """The names of the calls without an output, for STATUS=."""
        return ", ".join(sorted({c.name for c in self.calls.values() if c.output is None}))

    def on_call(self, ev: wire.FunctionCallDone, discarded: Container[str]) -> None:
        """The model called a tool: run it, or answer it at once when it must not run."""
        if ev.call_id in self._seen:
            return  # the same call, reported again by response.output_item.done
        self._seen[ev.call_id] = None
        if len(self._seen) > _SEEN_MEMORY:
            self._seen.popitem(last=False)
        if ev.response_id in discarded or not ev.complete:
            # the user interrupted the response that made this call (here, or the server
            # cancelled it on their speech, leaving the call incomplete): do not run it,
            # but answer it, so the conversation holds no call without an output
            logger.info("tool call %s from an interrupted response not run",
                        guard.printable(ev.name, 100))
            self.out.send(wire.function_output_item(self.out.eid(), ev.call_id, _CANCELLED))
            return
        if sum(c.output is None for c in self.calls.values()) >= MAX_CALLS:
            if guard.should_log("session:too-many-calls") is not None:
                logger.warning("more than %d tool calls at once: %s answered with an error, "
                               "not run", MAX_CALLS, guard.printable(ev.name, 100))
            self.out.send(wire.function_output_item(self.out.eid(), ev.call_id,
                                                    _TOO_MANY_CALLS))
            return
        logger.info("tool call: %s", guard.printable(ev.name, 100))
        self.facts.counters.tool_calls += 1
        self.calls[ev.call_id] = Call(response_id=ev.response_id, name=ev.name)
        self.out.emit(CallTool(ev.call_id, ev.name, ev.arguments))

    def on_result(self, call_id: str, output: str) -> bool:
        """A tool finished: its output goes to the model. False if nobody waits for it."""
        call = self.calls.get(call_id)
        if call is None or call.output is not None:
            logger.debug("result for call %s nobody waits for (cancelled)", call_id)
            return False
        call.output = output
        if self.facts.configured:
            self.out.send(wire.function_output_item(self.out.eid(), call_id, output))
        return True

    def maybe_answer(self) -> None:
        """Ask for the spoken answer when every call has its output and the air is free."""
        f = self.facts
        if not self.calls or self.running() or f.active_response is not None:
            return
        self.calls.clear()
        if f.configured:
            self.out.send({"type": "response.create", "event_id": self.out.eid()})
            f.awaiting_reply = True

    def cancel(self, why: str) -> None:
        """Stop running tool calls; the model is told each was cancelled, not answered."""
        for call_id, call in self.calls.items():
            if call.output is None:
                logger.info("tool call %s cancelled: %s", call.name, why)
                self.facts.counters.tool_calls_cancelled += 1
                self.out.emit(CancelTool(call_id))
                if self.facts.configured:
                    self.out.send(wire.function_output_item(self.out.eid(), call_id,
                                                            _CANCELLED))
        self.calls.clear()
