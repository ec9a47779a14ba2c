"""Tools the model may call: declarations for session.update, and running them safely.

A tool is a name, a description, a JSON schema for its arguments and an async function.
:meth:`Toolbox.run` never raises and never hangs, so every call is answered: the model's
arguments are parsed (at most :data:`MAX_ARGUMENTS` characters, any nesting) and checked
against the schema before the function runs, the call has a deadline, and any failure
becomes ``{"error": "..."}`` for the model to speak about. Unexpected ones (a tool's bug)
are counted in ``guard.faults``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import fastjsonschema

from voiced import guard, wire

logger = logging.getLogger(__name__)

MAX_ARGUMENTS: Final = 100_000
"""Characters of one call's arguments (a tool takes a few short values)."""


class ToolError(Exception):
    """A tool failed in a way the model should hear about (the message is spoken)."""


@dataclass(frozen=True, slots=True)
class Tool:
    """One callable tool."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Callable[[dict[str, Any]], Awaitable[Any]]
    """Returns a JSON-serialisable result; raises :class:`ToolError` for a failure."""
    timeout_s: float

    def declaration(self) -> wire.FunctionToolParam:
        """The tool as session.update declares it."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}


class Toolbox:
    """The tools of one device, by name."""

    def __init__(self, tools: list[Tool]) -> None:
        self.tools = {t.name: t for t in tools}
        self._validators = {t.name: fastjsonschema.compile(t.parameters) for t in tools}

    def declarations(self) -> tuple[wire.FunctionToolParam, ...]:
        """What the model is told it may call."""
        return tuple(t.declaration() for t in self.tools.values())

    async def run(self, name: str, arguments: str) -> str:
        """Run one call; return the JSON text sent back as the function's output.

        Never raises (cancellation aside): every call gets an output.
        """
        try:
            return await self._run(name, arguments)
        except Exception as e:  # noqa: BLE001 - the last line of defence: always answer
            guard.note_fault("tool call", e, logger)
            return _error(f"the {guard.printable(name, 64)} tool failed: {type(e).__name__}")

    async def _run(self, name: str, arguments: str) -> str:
        tool = self.tools.get(name)
        if tool is None:
            return _error(f"there is no tool named {guard.printable(name, 64)!r}")
        if len(arguments) > MAX_ARGUMENTS:
            return _error(f"invalid arguments: longer than {MAX_ARGUMENTS} characters")
        try:
            args = guard.storable(json.loads(arguments or "{}"))  # half an emoji: U+FFFD
        except (ValueError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else f"not JSON ({e})"
            logger.warning("tool %s: arguments are %s", name, why)
            return _error(f"invalid arguments: {why}")
        if not isinstance(args, dict):
            return _error("invalid arguments: expected a JSON object")
        try:
            self._validators[name](args)
        except fastjsonschema.JsonSchemaValueException as e:
            logger.warning("tool %s: invalid arguments: %s", name, guard.printable(e.message))
            return _error(f"invalid arguments: {e.message.replace('data.', '', 1)}")
        try:
            result = await asyncio.wait_for(tool.call(args), tool.timeout_s)
        except TimeoutError:
            logger.warning("tool %s timed out after %g s", name, tool.timeout_s)
            return _error(f"the {name} tool did not answer within {tool.timeout_s:g} s")
        except ToolError as e:
            logger.warning("tool %s failed: %s", name, guard.printable(e))
            return _error(str(e))
        except Exception as e:  # noqa: BLE001 - a tool bug must not end the conversation
            guard.note_fault(f"tool {name}", e, logger)
            return _error(f"the {name} tool failed: {type(e).__name__}")
        try:
            output = json.dumps(guard.storable(result), ensure_ascii=False, default=str)
        except (ValueError, TypeError, RecursionError) as e:
            logger.warning("tool %s: its result cannot be sent: %s", name, type(e).__name__)
            return _error(f"the {name} tool failed: {type(e).__name__}")
        logger.info("tool %s done", name)
        return output


def _error(message: str) -> str:
    return json.dumps({"error": guard.storable(message)}, ensure_ascii=False)
