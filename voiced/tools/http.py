"""Tools declared in YAML that call an HTTP endpoint (home automation, a web API).

The model's arguments are hostile: only the ones the schema declares are sent, a value
filling a placeholder in the URL's path can never leave the template's path (no ``/``,
backslash, ``.`` or ``..`` segment, however encoded), redirects are never followed (the
request carries the tool's credential headers), and the reply is read only up to
``max_reply_bytes``.
"""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote, unquote

import aiohttp

from voiced.config import HttpToolSettings
from voiced.http_peer import ERROR_BODY_LIMIT, BodyTooLarge, is_redirect, read_body, read_text
from voiced.tools import Tool, ToolError


def http_tool(spec: HttpToolSettings) -> Tool:
    """A :class:`Tool` that performs the request ``spec`` describes.

    Arguments named in the URL template are URL-encoded into it; the rest of the
    declared ones go to the query string or a JSON body (``send_arguments``). A non-2xx
    status, a redirect, a reply too large, a reply that is not JSON where a path is asked
    for, or a network failure is a :class:`ToolError`.
    """
    declared = set(spec.parameters.get("properties") or {})
    path_fields, query_fields = _placeholders(spec.url)

    async def call(args: dict[str, Any]) -> Any:
        args = {k: v for k, v in args.items() if k in declared}  # nothing undeclared
        for name in path_fields & args.keys():
            why = _path_value_problem(args[name])
            if why is not None:
                raise ToolError(f"the argument {name} {why}")
        url = spec.url.format_map(_Blank({k: quote(str(v), safe="")
                                          for k, v in args.items()}))
        rest = {k: v for k, v in args.items() if k not in path_fields | query_fields}
        headers = {k: v.reveal() for k, v in spec.headers}
        params = ({k: _text(v) for k, v in rest.items()}
                  if spec.send_arguments == "query" else None)
        body = rest if spec.send_arguments == "json" else None
        try:
            async with aiohttp.ClientSession() as session, session.request(
                    spec.method, url, params=params, json=body, headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as resp:
                status = resp.status
                if is_redirect(status):
                    raise ToolError(f"the {spec.name} service answered with a redirect "
                                    f"(HTTP {status}), which is not followed")
                if not 200 <= status < 300:
                    raise ToolError(f"the {spec.name} service answered HTTP {status}: "
                                    f"{_cut(await read_text(resp, ERROR_BODY_LIMIT), 200)}")
                data = await read_body(resp, spec.max_reply_bytes)
        except BodyTooLarge as e:
            raise ToolError(f"the {spec.name} service's reply is more than {e.limit} "
                            "bytes") from None
        except aiohttp.ClientError as e:
            raise ToolError(f"the {spec.name} service could not be reached "
                            f"({type(e).__name__})") from e
        text = data.decode("utf-8", errors="replace")
        try:
            reply: Any = json.loads(text) if text.strip() else None
        except (ValueError, RecursionError):
            if spec.reply_path:
                raise ToolError(f"the {spec.name} service did not answer with JSON") from None
            return {"text": _cut(text, spec.max_reply_chars)}
        if spec.reply_path:
            for part in spec.reply_path.split("."):
                if isinstance(reply, dict) and part in reply:
                    reply = reply[part]
                elif isinstance(reply, list) and part.isdigit() and int(part) < len(reply):
                    reply = reply[int(part)]
                else:
                    raise ToolError(f"the {spec.name} reply has no {spec.reply_path!r}")
        encoded = json.dumps(reply, ensure_ascii=False)
        if len(encoded) > spec.max_reply_chars:
            return {"truncated": True, "text": _cut(encoded, spec.max_reply_chars)}
        return reply

    return Tool(spec.name, spec.description, spec.parameters, call, spec.timeout_s)


def _placeholders(url: str) -> tuple[set[str], set[str]]:
    """The placeholders in the template's path, and those in its query."""
    path, _, query = url.partition("?")
    return ({f for _, f, _, _ in string.Formatter().parse(path) if f},
            {f for _, f, _, _ in string.Formatter().parse(query) if f})


def _path_value_problem(value: object) -> str | None:
    """Why ``value`` may not fill a path placeholder, or None.

    Decoded as a server might (repeatedly, up to three times), it must not hold a
    separator or be a dot segment: ``..`` turned ``/api/states/{entity}`` into
    ``/api/``.
    """
    text = str(value)
    for _ in range(4):
        if "/" in text or "\\" in text:
            return "may not contain / or \\"
        if text.split(";", 1)[0] in (".", ".."):
            return "may not be . or .."
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return "may not contain control characters"
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return None


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Blank(dict[str, str]):
    """Optional parameters left out by the model leave their placeholder empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
