"""Responses of `voiced sim`: what the simulated model says or calls, streamed in GA order.

A response answers the conversation (or, with ``conversation: "none"``, its own
``input``, out of band); says the ``Say:`` line of its instructions, the tools' outputs,
or :attr:`SimOptions.reply` of what the user said; speaks (audio and its transcript) or
writes (``output_modalities: ["text"]``); calls the tools the user named, with arguments
that fit their schemas. A cancelled response closes what it had started with the same
done events as a finished one (cut short, status ``incomplete``) before its
``response.done``, and every ``response.done`` is followed by ``rate_limits.updated``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from voiced.sim import voice
from voiced.sim.options import SimOptions
from voiced.sim.toolargs import arguments_for
from voiced.wire import SAMPLE_RATE

if TYPE_CHECKING:
    from voiced.sim.server import SimServer

logger = logging.getLogger(__name__)

_CHUNK_MS = 100  # reply audio per delta
_LEAD_MS = 300  # how far ahead of real time the reply is streamed
_SAY = re.compile(r"^\s*say:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_T = TypeVar("_T")


def new_id(prefix: str) -> str:
    """An id shaped like upstream's (``item_…``, ``resp_…``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def pieces(text: str, n: int) -> list[str]:
    """``text`` in at most ``n`` word-aligned deltas that join back to it exactly."""
    words = re.findall(r"\s*\S+\s*$|\s*\S+", text)
    if not words:
        return []
    size = math.ceil(len(words) / n)
    return ["".join(words[i:i + size]) for i in range(0, len(words), size)]


class ClientMistake(Exception):
    """A client event upstream refuses: an ``error`` event, the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None,
                 etype: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.etype = code, message, param, etype

    @classmethod
    def missing(cls, param: str) -> ClientMistake:
        """A required parameter is absent (``param`` is its dotted path)."""
        return cls("missing_required_parameter", f"Missing required parameter: '{param}'.",
                   param)


@dataclass
class Turn:
    """A committed user turn, and its transcription."""

    item: dict[str, Any]
    audio: bytes
    release: bool  # may its transcript events go out once they are ready
    task: asyncio.Task[str] | None = None  # the transcription: what the model heard
    events: list[dict[str, Any]] | None = None  # the transcript events, once transcribed
    sent: bool = False


@dataclass
class Response:
    """A response being generated, and what it has sent so far."""

    id: str
    conversation: bool  # its items join the conversation (conversation "auto")
    modalities: list[str]
    voice: str
    instructions: str
    tools: list[Any]
    tool_choice: Any
    metadata: Any = None
    max_output_tokens: Any = "inf"
    input: list[dict[str, Any]] | None = None  # its own input; None: the conversation
    turns: list[Turn] = field(default_factory=list)  # whose late transcripts it carries
    idle: bool = False  # answers an idle timeout
    task: asyncio.Task[None] | None = None
    created: bool = False
    finished: bool = False
    output: list[dict[str, Any]] = field(default_factory=list)
    item: dict[str, Any] | None = None  # the output item being streamed
    part: dict[str, Any] | None = None  # its content part
    output_index: int = -1
    audio_ms: float = 0.0
    words: int = 0


class Responder:
    """The response half of a :class:`~voiced.sim.conversation.SimSession`."""

    # provided by the session
    server: SimServer
    opts: SimOptions
    session: dict[str, Any]
    items: dict[str, dict[str, Any]]
    item_audio_ms: dict[str, float]
    response: Response | None
    out_of_band: dict[str, Response]
    responses_done: list[dict[str, Any]]
    _prev: dict[str, str | None]
    _turn_of: dict[str, Turn]
    _claimable: list[Turn]
    _reply_owed: bool
    _audio_out: bool
    _idle_from_ms: float

    if TYPE_CHECKING:  # the session's, used here
        def emit(self, event: dict[str, Any]) -> None: ...  # noqa: D102
        def abort(self) -> None: ...  # noqa: D102
        def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]: ...
        def _free(self, turns: list[Turn]) -> None: ...
        def _add_item(self, item: dict[str, Any],
                      after: str | None | bool = False) -> None: ...
        def _input_ms(self) -> float: ...

    async def on_response_create(self, ev: dict[str, Any]) -> None:
        """Start a response: to the conversation, or out of band with its own input."""
        params = ev.get("response") or {}
        if not isinstance(params, dict):
            raise ClientMistake("invalid_type", "Invalid type for 'response'.", "response")
        conversation = params.get("conversation", "auto")
        if conversation not in ("auto", "none"):
            raise ClientMistake("invalid_value", f"Invalid value: '{conversation}'. Supported "
                                "values are: 'auto' and 'none'.", "response.conversation")
        if "output_modalities" in params:
            check_modalities(params["output_modalities"], "response.output_modalities")
        if "input" in params:
            self._resolve_input(params["input"])  # refuses what it cannot resolve
        if conversation == "none":
            self._start_response(params)
            return
        if self.response is not None:
            raise ClientMistake(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: "
                f"{self.response.id}. Wait until the response is finished before creating "
                f"a new one.")
        self._start_response(params, turns=self._claimable)
        self._claimable = []

    def _resolve_input(self, given: Any) -> list[dict[str, Any]]:
        if not isinstance(given, list) or not all(isinstance(i, dict) for i in given):
            raise ClientMistake("invalid_type", "Invalid type for 'response.input': expected "
                                "an array of items.", "response.input")
        out = []
        for i, item in enumerate(given):
            if item.get("type") == "item_reference":
                ref = self.items.get(str(item.get("id")))
                if ref is None:
                    raise ClientMistake("invalid_value", f"Item with id '{item.get('id')}' "
                                        "not found.", f"response.input[{i}].id")
                item = ref
            out.append(item)
        return out

    def _start_response(self, params: dict[str, Any], *, turns: list[Turn] | None = None,
                        idle: bool = False) -> None:
        out = self.session["audio"]["output"]
        voice_name = ((params.get("audio") or {}).get("output") or {}).get("voice", out["voice"])
        resp = Response(
            id=new_id("resp"), conversation=params.get("conversation", "auto") == "auto",
            modalities=list(params.get("output_modalities") or self.session["output_modalities"]),
            voice=voice_name if isinstance(voice_name, str) else out["voice"],
            instructions=str(params.get("instructions", self.session.get("instructions") or "")),
            tools=list(params.get("tools", self.session.get("tools") or [])),
            tool_choice=params.get("tool_choice", self.session.get("tool_choice", "auto")),
            metadata=params.get("metadata"),
            max_output_tokens=params.get("max_output_tokens",
                                         self.session.get("max_output_tokens", "inf")),
            input=self._resolve_input(params["input"]) if "input" in params else None,
            turns=list(turns or []), idle=idle)
        if resp.conversation:
            self.response = resp
        else:
            self.out_of_band[resp.id] = resp
        resp.task = self._spawn(self._run_response(resp))

    def _created(self, resp: Response) -> None:
        resp.created = True
        self.emit({"type": "response.created",
                   "response": self._response_obj(resp, "in_progress")})

    async def _run_response(self, resp: Response) -> None:
        if self.opts.user_transcript == "early":
            for turn in resp.turns:  # the words reach the client before the response
                if turn.task is not None:
                    await asyncio.shield(turn.task)
        self._created(resp)
        heard, outputs = await self._prompt(resp)
        calls = [] if outputs else self._pick_tools(heard, resp)
        if calls:
            await self._stream_calls(resp, calls, heard)
            return
        if outputs:
            text = " ".join(f"The {name} tool says: {output}" for name, output in outputs)
        elif said := _SAY.search(resp.instructions):
            text = said.group(1)
        elif resp.idle:
            text = "Are you still there?"
        else:
            text = self.opts.reply(heard or "nothing")
        await self._stream_message(resp, text)

    async def _prompt(self, resp: Response) -> tuple[str, list[tuple[str, Any]]]:
        """What the response answers: the newest user words, or its input's tool outputs."""
        items = resp.input if resp.input is not None else list(self.items.values())
        outputs: list[tuple[str, Any]] = []
        for item in reversed(items):  # the outputs since the last call
            if item.get("type") != "function_call_output":
                break
            name = next((i.get("name") for i in self.items.values()
                         if i.get("call_id") == item.get("call_id")
                         and i.get("type") == "function_call"), "tool")
            outputs.insert(0, (str(name), item.get("output")))
        if outputs:
            return "", outputs
        for item in reversed(items):
            if item.get("role") != "user":
                continue
            turn = self._turn_of.get(str(item.get("id")))
            if turn is not None and turn.task is not None and item is turn.item:
                return await asyncio.shield(turn.task), []
            part = (item.get("content") or [{}])[0]
            if part.get("type") == "input_audio" and part.get("audio"):
                pcm = base64.b64decode(str(part["audio"]))
                return (await asyncio.to_thread(voice.transcribe, pcm))[0], []
            return str(part.get("transcript") or part.get("text") or ""), []
        return "", []

    def _pick_tools(self, heard: str, resp: Response) -> list[dict[str, Any]]:
        """The tools the simulated model calls: those the user named, as tool_choice allows.

        A function named in tool_choice is called; with "required", the first tool if the
        user named none.
        """
        choice = resp.tool_choice
        tools = [t for t in resp.tools if isinstance(t, dict) and t.get("type") == "function"
                 and isinstance(t.get("name"), str)]
        if choice == "none":
            return []
        if isinstance(choice, dict) and choice.get("type") == "function":
            return [t for t in tools if t["name"] == choice.get("name")][:1]
        words = heard.lower()
        named = [t for t in tools if t["name"].lower() in words
                 or t["name"].lower().replace("_", " ") in words]
        if not named and choice == "required":
            named = tools[:1]
        return named

    def _response_obj(self, resp: Response, status: str,
                      reason: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "object": "realtime.response", "id": resp.id, "status": status,
            "status_details": None if reason is None else {"type": status, "reason": reason},
            "output": [dict(i) for i in resp.output] if status != "in_progress" else [],
            "conversation_id": "conv_sim" if resp.conversation else None,
            "output_modalities": resp.modalities,
            "max_output_tokens": resp.max_output_tokens,
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                                 "voice": resp.voice}},
            "usage": None, "metadata": resp.metadata,
        }
        if status != "in_progress":
            audio = resp.words if "audio" in resp.modalities else 0
            obj["usage"] = {"total_tokens": 30 + resp.words + audio, "input_tokens": 30,
                            "output_tokens": resp.words + audio,
                            "input_token_details": {"text_tokens": 10, "audio_tokens": 20,
                                                    "cached_tokens": 0},
                            "output_token_details": {"text_tokens": resp.words,
                                                     "audio_tokens": audio}}
        return obj

    def _open_item(self, resp: Response, item: dict[str, Any]) -> dict[str, Any]:
        resp.output_index += 1
        item = {"id": new_id("item"), "object": "realtime.item", "status": "in_progress",
                **item}
        resp.item = item
        self.emit({"type": "response.output_item.added", "response_id": resp.id,
                   "output_index": resp.output_index, "item": dict(item)})
        if resp.conversation:
            self._add_item(item)
        return item

    def _first_delta(self, resp: Response) -> None:
        """Late transcripts of the turns this response answers follow its first delta."""
        self._free(resp.turns)

    async def _stream_message(self, resp: Response, text: str) -> None:
        audio = "audio" in resp.modalities
        pcm = await asyncio.to_thread(voice.speak, text) if audio else b""
        item = self._open_item(resp, {"type": "message", "role": "assistant", "content": []})
        base = {"response_id": resp.id, "item_id": item["id"],
                "output_index": resp.output_index, "content_index": 0}
        part: dict[str, Any] = ({"type": "audio", "transcript": ""} if audio
                                else {"type": "text", "text": ""})
        resp.part = part
        self.emit({"type": "response.content_part.added", **base, "part": dict(part)})
        words = pieces(text, max(1, len(text.split())))
        if not audio:
            for i, piece in enumerate(words):
                part["text"] += piece
                resp.words += 1
                self.emit({"type": "response.output_text.delta", **base, "delta": piece})
                if i == 0:
                    self._first_delta(resp)
                await asyncio.sleep(0)
            part["text"] = text
            self._close_item(resp, "completed")
            self._finish(resp, "completed")
            return
        chunk = SAMPLE_RATE * _CHUNK_MS // 1000 * 2
        n_chunks = max(1, math.ceil(len(pcm) / chunk))
        self.item_audio_ms[item["id"]] = 0.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        word_i = 0
        for i in range(n_chunks):
            delay = t0 + (i * _CHUNK_MS - _LEAD_MS) / 1000 / self.opts.pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sound = pcm[i * chunk:(i + 1) * chunk]
            resp.audio_ms += len(sound) / 2 / SAMPLE_RATE * 1000
            self.item_audio_ms[item["id"]] = resp.audio_ms
            self._audio_out = True
            self.emit({"type": "response.output_audio.delta", **base,
                       "delta": base64.b64encode(sound).decode()})
            if i == 0:
                self._first_delta(resp)
            if i == n_chunks // 2 and self.server.take_drop():
                logger.info("fault: dropping the connection mid-response")
                self.abort()
                return
            upto = math.ceil(len(words) * (i + 1) / n_chunks)
            if upto > word_i:
                delta = "".join(words[word_i:upto])
                resp.words += upto - word_i
                word_i = upto
                part["transcript"] += delta
                self.emit({"type": "response.output_audio_transcript.delta", **base,
                           "delta": delta})
        part["transcript"] = text
        self._close_item(resp, "completed")
        self._finish(resp, "completed")

    async def _stream_calls(self, resp: Response, tools: list[dict[str, Any]],
                            heard: str) -> None:
        for tool in tools:
            name = tool["name"]
            call_id = new_id("call")
            item = self._open_item(resp, {"type": "function_call", "call_id": call_id,
                                          "name": name, "arguments": ""})
            resp.part = {"type": "function_call"}
            base = {"response_id": resp.id, "item_id": item["id"],
                    "output_index": resp.output_index, "call_id": call_id}
            args = self.opts.tool_arguments.get(name)
            if args is None:
                args = json.dumps(arguments_for(tool.get("parameters"), heard))
            half = len(args) // 2  # the arguments stream in pieces, as upstream's do
            for piece in (args[:half], args[half:]):
                item["arguments"] += piece
                self.emit({"type": "response.function_call_arguments.delta", **base,
                           "delta": piece})
                await asyncio.sleep(0)
            self.emit({"type": "response.function_call_arguments.done", **base,
                       "name": name, "arguments": args})
            self._first_delta(resp)
            self._close_item(resp, "completed")
        self._finish(resp, "completed")

    def _close_item(self, resp: Response, status: str) -> None:
        """The done events of the item being streamed, whole or cut short."""
        item, part = resp.item, resp.part
        resp.item = resp.part = None
        if item is None:
            return
        base = {"response_id": resp.id, "item_id": item["id"],
                "output_index": resp.output_index}
        if part is not None and part["type"] == "audio":
            self.emit({"type": "response.output_audio.done", **base, "content_index": 0})
            self.emit({"type": "response.output_audio_transcript.done", **base,
                       "content_index": 0, "transcript": part["transcript"]})
            self.emit({"type": "response.content_part.done", **base, "content_index": 0,
                       "part": dict(part)})
            item["content"] = [{"type": "output_audio", "transcript": part["transcript"]}]
        elif part is not None and part["type"] == "text":
            self.emit({"type": "response.output_text.done", **base, "content_index": 0,
                       "text": part["text"]})
            self.emit({"type": "response.content_part.done", **base, "content_index": 0,
                       "part": dict(part)})
            item["content"] = [{"type": "output_text", "text": part["text"]}]
        item["status"] = status
        if resp.conversation:
            self.emit({"type": "conversation.item.done", "item": dict(item),
                       "previous_item_id": self._prev.get(item["id"])})
        self.emit({"type": "response.output_item.done", "response_id": resp.id,
                   "output_index": resp.output_index, "item": dict(item)})
        resp.output.append(dict(item))

    def _finish(self, resp: Response, status: str, reason: str | None = None) -> None:
        """End a response: ``response.done`` then ``rate_limits.updated``, as upstream."""
        if resp.finished:
            return
        resp.finished = True
        if self.response is resp:
            self.response = None
        self.out_of_band.pop(resp.id, None)
        self._free(resp.turns)
        if resp.created:
            done = self._response_obj(resp, status, reason)
            self.responses_done.append(done)
            self.emit({"type": "response.done", "response": done})
            self.emit({"type": "rate_limits.updated", "rate_limits": [
                {"name": "tokens", "limit": 40000, "remaining": max(0, 39970 - 2 * resp.words),
                 "reset_seconds": 1.5}]})
        if resp.conversation:
            # the idle timeout counts from when the reply has been heard
            self._idle_from_ms = self._input_ms() + resp.audio_ms
            if self._reply_owed:
                self._reply_owed = False
                self._start_response({})

    def _cancel(self, resp: Response, reason: str) -> None:
        """Stop a response: its item's done events, then ``response.done`` (cancelled)."""
        if resp.task is not None:
            resp.task.cancel()
        self._close_item(resp, "incomplete")
        self._finish(resp, "cancelled", reason)

    async def on_response_cancel(self, ev: dict[str, Any]) -> None:
        """Cancel the active response (or the one named), or refuse like upstream."""
        rid = ev.get("response_id")
        resp = self.response if not rid else (
            self.response if self.response is not None and self.response.id == rid
            else self.out_of_band.get(str(rid)))
        if resp is None or not resp.created:
            raise ClientMistake("response_cancel_not_active",
                                "Cancellation failed: no active response found")
        self._cancel(resp, "client_cancelled")



def check_modalities(value: Any, param: str) -> None:
    """Refuse output modalities other than audio alone or text alone."""
    if value not in (["audio"], ["text"]):
        raise ClientMistake("invalid_value", "Invalid value: output modalities must be "
                            "['audio'] or ['text'] (not both).", param)


