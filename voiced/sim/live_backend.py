"""Responses delegation in the simulator's Live endpoint: the backend's function calls.

With ``delegation.type: responses`` the simulated model hands a request to a Responses
backend: a function tool the user names is called through ``response.event`` envelopes
(``response.created``, ``response.output_item.done``, ``response.completed``); its output,
given back with ``response.item.create`` and ``response.create``, is spoken. A request
naming no tool is answered by the backend's text.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from voiced.sim.responses import ClientMistake, new_id
from voiced.sim.toolargs import arguments_for

if TYPE_CHECKING:
    from voiced.sim.live import LiveSession


class ResponsesBackend:
    """The backend's open function calls, of one delegation at a time."""

    def __init__(self, live: LiveSession) -> None:
        self.live = live
        self.calls: dict[str, str | None] = {}  # call_id → output
        self.names: dict[str, str] = {}  # call_id → tool name
        self.delegation: str | None = None  # the delegation the calls belong to
        self.sequence = 0

    def _settings(self) -> dict[str, Any]:
        return dict(self.live.delegation.get("responses") or {})

    def named_tool(self, lowered: str) -> dict[str, Any] | None:
        """The backend's function tool the user's words name (as a whole word), if any."""
        tools: list[dict[str, Any]] = [t for t in self._settings().get("tools") or []
                                        if isinstance(t, dict) and t.get("type") == "function"]
        for tool in tools:
            name = tool.get("name")
            if isinstance(name, str) and (f" {name.lower()} " in lowered
                                          or f" {name.lower().replace('_', ' ')} " in lowered):
                return tool
        return None

    def _event(self, delegation_id: str, event: dict[str, Any]) -> None:
        self.sequence += 1
        self.live.emit({"type": "response.event", "delegation_id": delegation_id,
                        "event": {**event, "sequence_number": self.sequence}})

    def _response(self, response_id: str, status: str) -> dict[str, Any]:
        """A lifecycle snapshot: output, instructions and tools blanked, as the service's."""
        backend = self._settings()
        out: dict[str, Any] = {
            "id": response_id, "object": "response", "created_at": int(self.live.clock.time()),
            "status": status, "model": backend.get("model", ""), "output": [],
            "parallel_tool_calls": bool(backend.get("parallel_tool_calls", False)),
            "tool_choice": "auto", "tools": [], "instructions": None}
        if status == "completed":
            out["usage"] = {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52,
                            "input_tokens_details": {"cached_tokens": 0,
                                                     "cache_write_tokens": 0},
                            "output_tokens_details": {"reasoning_tokens": 0}}
        return out

    def _respond(self, delegation_id: str, items: list[dict[str, Any]],
                 response_id: str | None = None) -> None:
        response_id = response_id or new_id("resp")
        self._event(delegation_id, {"type": "response.created",
                                    "response": self._response(response_id, "in_progress")})
        for i, item in enumerate(items):
            self._event(delegation_id, {"type": "response.output_item.done",
                                        "output_index": i, "item": item})
        self._event(delegation_id, {"type": "response.completed",
                                    "response": self._response(response_id, "completed")})

    def _says(self, delegation_id: str, text: str, response_id: str | None = None) -> None:
        self._respond(delegation_id, [{
            "id": new_id("msg"), "type": "message", "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            response_id)
        self.live.say_when_heard(text)

    def delegate(self, heard: str, at_ms: int, tool: dict[str, Any] | None) -> None:
        """Delegate to the backend: a call of ``tool``, or an answer when none was named."""
        response_id = new_id("resp")
        delegation_id = self.live.context.delegated(at_ms, "responses", response_id)
        if tool is None:
            self._says(delegation_id, self.live.opts.reply(heard), response_id)
            return
        name = str(tool["name"])
        call_id = new_id("call")
        args = self.live.opts.tool_arguments.get(name)
        if args is None:
            args = json.dumps(arguments_for(tool.get("parameters"), heard))
        self.calls, self.names = {call_id: None}, {call_id: name}
        self.delegation = delegation_id
        self._respond(delegation_id, [{
            "id": new_id("fc"), "type": "function_call", "call_id": call_id, "name": name,
            "arguments": args, "status": "completed"}], response_id)

    def on_item(self, ev: dict[str, Any]) -> None:
        """A function call's output for the backend (Responses delegation only)."""
        self._need(ev["type"])
        item = ev.get("item")
        if not isinstance(item, dict):
            raise ClientMistake.missing("item")
        if item.get("type") == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in self.calls:
                raise ClientMistake("invalid_value", f"No open function call '{call_id}'.",
                                    "item.call_id")
            self.calls[str(call_id)] = str(item.get("output", ""))

    def on_create(self, ev: dict[str, Any]) -> None:
        """Continue the backend once every open call has its output."""
        self._need(ev["type"])
        calls = self.calls
        if not calls:
            raise ClientMistake("invalid_value", "No open function calls to continue (what "
                                "the service does then is not known; voiced sim refuses).")
        if any(output is None for output in calls.values()):
            raise ClientMistake("invalid_value", "Every open function call needs an output "
                                "before response.create.")
        text = " ".join(f"The {self.names[c]} tool says: {out}"
                        for c, out in calls.items())
        delegation_id = self.delegation or ""
        self.calls, self.names, self.delegation = {}, {}, None
        self._says(delegation_id, text)

    def _need(self, kind: str) -> None:
        if self.live.delegation["type"] != "responses":
            raise ClientMistake("invalid_value", f"{kind} requires Responses delegation.")
