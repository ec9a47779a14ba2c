"""Tools the model may call: declarations for session.update, and running them safely.

A tool is a name, a description, a JSON schema for its arguments and an async function.
:meth:`Toolbox.run` never raises and never hangs: the model's arguments are parsed and
checked against the schema before the function runs, the call has a deadline, and any
failure becomes ``{"error": "..."}`` for the model to speak about.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import fastjsonschema

from voiced import wire

logger = logging.getLogger(__name__)


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
        """Run one call; return the JSON text sent back as the function's output."""
        tool = self.tools.get(name)
        if tool is None:
            return _error(f"there is no tool named {name!r}")
        try:
            args = json.loads(arguments or "{}")
        except ValueError as e:
            logger.warning("tool %s: arguments are not JSON: %s", name, e)
            return _error(f"invalid arguments: not JSON ({e})")
        if not isinstance(args, dict):
            return _error("invalid arguments: expected a JSON object")
        try:
            self._validators[name](args)
        except fastjsonschema.JsonSchemaValueException as e:
            logger.warning("tool %s: invalid arguments: %s", name, e.message)
            return _error(f"invalid arguments: {e.message.replace('data.', '', 1)}")
        try:
            result = await asyncio.wait_for(tool.call(args), tool.timeout_s)
        except TimeoutError:
            logger.warning("tool %s timed out after %g s", name, tool.timeout_s)
            return _error(f"the {name} tool did not answer within {tool.timeout_s:g} s")
        except ToolError as e:
            logger.warning("tool %s failed: %s", name, e)
            return _error(str(e))
        except Exception as e:  # noqa: BLE001 - a tool bug must not end the conversation
            logger.exception("tool %s raised", name)
            return _error(f"the {name} tool failed: {type(e).__name__}")
        logger.info("tool %s done", name)
        return json.dumps(result, ensure_ascii=False, default=str)


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)
