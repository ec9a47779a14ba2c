"""What a huge HTTP reply costs the daemon: an HTTP tool's reply and a webhook's error body.

Run: ``.venv/bin/python bench/hostile_bodies.py [--tool-mb 400] [--webhook-mb 300]``.
A local server streams the body; each client runs in a fresh child process, which
reports its peak RSS above what it had once warmed up. The baseline, in the same run,
is the same request read the way 82fde82 did (``resp.text()``, the whole body).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.backends import serve_app  # noqa: E402

CHILD = r"""
import asyncio, json, resource, sys, time
sys.path.insert(0, REPO)
import aiohttp
from voiced import config
from voiced.config import Secret
from voiced.sinks.http import WebhookSink
from voiced.tools import ToolError
from voiced.tools.http import http_tool
from tests.test_transcript_delivery import record

def rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def main(kind, url):
    async with aiohttp.ClientSession() as s:  # warm up: imports, a connection
        async with s.get(url + "/small") as r:
            await r.read()
    base = rss_kb()
    t0 = time.monotonic()
    if kind == "tool":
        tool = http_tool(config.HttpToolSettings(
            name="t", description="d", parameters={"type": "object"}, url=url + "/reply",
            timeout_s=300))
        try:
            await tool.call({})
            what = "read"
        except ToolError as e:
            what = str(e)
    elif kind == "webhook":
        sink = WebhookSink(url + "/error", token=Secret("tok-0123456789"), timeout_s=300)
        what = (await sink.deliver(record(1))).outcome.value
        await sink.aclose()
    else:  # the baseline: the whole body, as 82fde82 read it
        path = "/reply" if kind == "tool-baseline" else "/error"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + path) as r:
                what = f"{len(await r.text(errors='replace'))} characters"
    print(json.dumps({"kind": kind, "peak_mb": (rss_kb() - base) / 1024,
                      "seconds": time.monotonic() - t0, "result": what[:80]}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def serve(tool_mb: int, webhook_mb: int) -> tuple[web.AppRunner, str]:
    chunk = b"[" + b"1," * 32767 + b"1"

    async def stream(request: web.Request, megabytes: int, status: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=status)
        resp.content_type = "application/json"
        await resp.prepare(request)
        sent = 0
        try:
            while sent < megabytes * 1024 * 1024:
                await resp.write(chunk)
                sent += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    app = web.Application()
    app.router.add_get("/small", lambda r: web.json_response({}))
    app.router.add_get("/reply", lambda r: stream(r, tool_mb, 200))
    app.router.add_get("/error", lambda r: stream(r, webhook_mb, 500))
    app.router.add_post("/error", lambda r: stream(r, webhook_mb, 500))
    return await serve_app(app)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool-mb", type=int, default=400)
    ap.add_argument("--webhook-mb", type=int, default=300)
    args = ap.parse_args()
    runner, url = await serve(args.tool_mb, args.webhook_mb)
    rows = []
    try:
        for kind in ("tool", "tool-baseline", "webhook", "webhook-baseline"):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD.replace("REPO", repr(str(REPO))), kind, url,
                stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            rows.append(json.loads(out))
    finally:
        await runner.cleanup()
    print(f"{'case':<18} {'peak RSS above warm':>20} {'seconds':>8}  result")
    for r in rows:
        print(f"{r['kind']:<18} {r['peak_mb']:>17.1f} MB {r['seconds']:>8.2f}  {r['result']}")
    print(f"(tool reply {args.tool_mb} MB, webhook error body {args.webhook_mb} MB; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB "
          "for the largest child)")


if __name__ == "__main__":
    asyncio.run(main())
