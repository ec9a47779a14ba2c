"""Tools declared in YAML that call an HTTP endpoint (home automation, a web API)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

from voiced.config import HttpToolSettings
from voiced.tools import Tool, ToolError


def http_tool(spec: HttpToolSettings) -> Tool:
    """A :class:`Tool` that performs the request ``spec`` describes.

    Arguments named in the URL template are URL-encoded into it; the rest go to the
    query string or a JSON body (``send_arguments``). A non-2xx status, a reply that is
    not JSON where a path is asked for, or a network failure is a :class:`ToolError`.
    """

    async def call(args: dict[str, Any]) -> Any:
        used = {k for k in args if "{" + k + "}" in spec.url}
        url = spec.url.format_map(_Blank({k: quote(str(v), safe="")
                                          for k, v in args.items()}))
        rest = {k: v for k, v in args.items() if k not in used}
        headers = {k: v.reveal() for k, v in spec.headers}
        params = ({k: v if isinstance(v, str) else json.dumps(v) for k, v in rest.items()}
                  if spec.send_arguments == "query" else None)
        body = rest if spec.send_arguments == "json" else None
        try:
            async with aiohttp.ClientSession() as session, session.request(
                    spec.method, url, params=params, json=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as resp:
                text = await resp.text(errors="replace")
                status = resp.status
        except aiohttp.ClientError as e:
            raise ToolError(f"the {spec.name} service could not be reached "
                            f"({type(e).__name__})") from e
        if not 200 <= status < 300:
            raise ToolError(f"the {spec.name} service answered HTTP {status}: "
                            f"{_cut(text, 200)}")
        try:
            reply: Any = json.loads(text) if text.strip() else None
        except ValueError:
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


class _Blank(dict[str, str]):
    """Optional parameters left out by the model leave their placeholder empty."""

    def __missing__(self, key: str) -> str:
        return ""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
