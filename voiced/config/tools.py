"""The ``tools:`` section's validator."""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

from voiced import guard
from voiced.config.secrets import Secret, _credential, _missing_credential, credential_problem
from voiced.config.sections import _MISSING, _kind, _path, _Section, _url
from voiced.config.settings import (
    BUILTIN_TOOL_NAMES,
    BUILTIN_TOOLS,
    CREDENTIAL_RE,
    HEADER_NAME_RE,
    HTTP_METHODS,
    SEND_ARGUMENTS,
    TOOL_NAME_RE,
    HttpToolSettings,
    ToolSettings,
)


def _tools(sec: _Section, base: Path, environ: Mapping[str, str]) -> ToolSettings:
    d = ToolSettings()
    bt = sec.section("builtin")
    enabled = []
    for name in BUILTIN_TOOLS:
        v = bt.raw(name)
        if v is _MISSING or v is True:
            enabled.append(name)
        elif v is not False:
            bt.bad(name, f"expected true or false, got {_kind(v)}")
    bt.finish()
    tz = sec.opt_str("timezone")
    if tz is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            sec.bad("timezone", f"unknown time zone {guard.printable(tz, 60)!r}; use an IANA "
                                "name like Europe/Berlin")
            tz = None
    volume_file = _path(sec, "volume_file", base)
    timeout_s = sec.num("timeout_s", d.timeout_s, lo=0.1, hi=300)
    raw = sec.raw("http")
    http: list[HttpToolSettings] = []
    if raw is not _MISSING and raw is not None:
        if not isinstance(raw, list):
            sec.bad("http", f"expected a list of tools, got {_kind(raw)}")
        else:
            names = set(BUILTIN_TOOL_NAMES)
            for i, entry in enumerate(raw):
                tool = _http_tool(_Section(entry, sec.key(f"http[{i}]"), sec.problems),
                                  environ, names)
                if tool is not None:
                    names.add(tool.name)
                    http.append(tool)
    floor = sec.int_("volume_floor_percent", d.volume_floor_percent, lo=0, hi=100)
    sec.finish()
    return ToolSettings(builtin=tuple(enabled), timezone=tz, volume_file=volume_file,
                        http=tuple(http), timeout_s=timeout_s, volume_floor_percent=floor)


def _http_tool(sec: _Section, environ: Mapping[str, str],
               taken: set[str]) -> HttpToolSettings | None:
    name = sec.str_("name", "")
    if not sec.has("name"):
        sec.bad("name", "is required")
    elif not TOOL_NAME_RE.match(name):
        sec.bad("name", f"{guard.printable(name, 80)!r} must be 1-64 letters, digits, _ or -")
    elif name in taken:
        sec.bad("name", f"{name!r} is already the name of another tool")
    description = sec.str_("description", "")
    if not sec.has("description"):
        sec.bad("description", "is required: the model decides from it when to call the tool")
    params = sec.raw("parameters")
    if params is _MISSING or params is None:
        params = {"type": "object", "properties": {}}
    schema_ok = False
    if not isinstance(params, dict) or params.get("type") != "object":
        sec.bad("parameters", "must be a JSON schema of type object")
    elif not _is_json(params):
        sec.bad("parameters", "holds a value JSON cannot carry (an unquoted date, binary "
                              "or a set?); quote it")
    elif (ref := _remote_ref(params)) is not None:
        # fastjsonschema would fetch it (http://, file://) at every start: the schema
        # must be all in the config
        sec.bad("parameters", f"refers to {guard.printable(ref, 80)!r}: only references "
                              "inside the schema (\"#/...\") are allowed")
    else:
        import fastjsonschema

        try:
            fastjsonschema.compile(params)
            schema_ok = True
        except fastjsonschema.JsonSchemaDefinitionException as e:
            sec.bad("parameters", f"is not a valid JSON schema: {guard.printable(e, 200)}")
        except Exception as e:  # noqa: BLE001 - the compiler on odd input: still the key
            sec.bad("parameters", f"is not a valid JSON schema ({type(e).__name__}: "
                                  f"{guard.printable(e, 120)})")
    props = params.get("properties", {}) if isinstance(params, dict) else {}
    headers, credentials = _tool_headers(sec.section("headers"), environ)
    url = _url(sec, "url", ("http", "https"), template=True, sends=(
        f"credential {', '.join(credentials)}" if credentials else None)) or ""
    if not sec.has("url"):
        sec.bad("url", "is required")
    try:
        fields = [(f, conv, spec) for _, f, spec, conv in string.Formatter().parse(url)
                  if f is not None]
    except ValueError as e:
        sec.bad("url", f"bad placeholder: {e}")
        fields = []
    for field_name, conv, spec in fields:
        if conv or spec or not isinstance(props, dict) or field_name not in props:
            sec.bad("url", f"placeholder {{{guard.printable(field_name, 40)}}} is not one of "
                           "the parameters")
    method = sec.choice("method", "GET", HTTP_METHODS)
    send = sec.choice("send_arguments", "query" if method in ("GET", "DELETE") else "json",
                      SEND_ARGUMENTS)
    timeout_s = sec.num("timeout_s", 5.0, lo=0.1, hi=120)
    reply_path = sec.opt_str("reply_path")
    max_reply = sec.int_("max_reply_chars", 2000, lo=100, hi=100_000)
    max_bytes = sec.int_("max_reply_bytes", 1_000_000, lo=1024, hi=16_000_000)
    sec.finish()
    if not (name and schema_ok and url and isinstance(params, dict)) or headers is None:
        return None
    return HttpToolSettings(
        name=name, description=description, parameters=dict(params), url=url,
        method=method, send_arguments=send,
        headers=headers, timeout_s=timeout_s, reply_path=reply_path,
        max_reply_chars=max_reply, max_reply_bytes=max_bytes)


def _is_json(value: object) -> bool:
    """Whether ``value`` is made of JSON's types only (it is sent in session.update)."""
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _remote_ref(schema: object) -> str | None:
    """The first ``$ref`` (or absolute ``$id``) in ``schema`` that points outside it."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref, sid = node.get("$ref"), node.get("$id")
            if isinstance(ref, str) and not ref.startswith("#"):
                return ref
            if isinstance(sid, str) and ":" in sid:
                return sid
            stack += node.values()
        elif isinstance(node, list):
            stack += node
    return None


def _tool_headers(hs: _Section, environ: Mapping[str, str]
                  ) -> tuple[tuple[tuple[str, Secret], ...] | None, list[str]]:
    """A tool's headers, credentials filled in, and the credentials they send.

    The headers are None when one of them (or a credential) is unusable.
    """
    headers: list[tuple[str, Secret]] = []
    used: list[str] = []
    ok = True
    for header in list(hs.data):
        value = hs.raw(str(header))
        if not isinstance(header, str) or not HEADER_NAME_RE.match(header):
            hs.problems.add(hs.path, f"{guard.printable(header, 60)!r} is not a header name "
                                     "(letters, digits and !#$%&'*+.^_`|~-)")
            ok = False
            continue
        if not isinstance(value, str):
            hs.bad(header, f"expected a string, got {_kind(value)}")
            ok = False
            continue
        why = credential_problem(CREDENTIAL_RE.sub("", value))
        if why is not None:
            hs.bad(header, why.replace("a credential is one line", "a header is one line")
                   .replace(" (a file may end with one newline)", ""))
            ok = False
            continue
        filled = value
        for cred in CREDENTIAL_RE.findall(value):
            used.append(cred)
            secret = _credential(hs, cred, environ)
            if secret is None:
                ok = False
                if not hs.problems.has(f"credentials.{cred}"):
                    hs.problems.add(f"credentials.{cred}", (
                        f"{_missing_credential(cred)} (used by {hs.key(header)})"))
            else:
                filled = filled.replace("{credential:" + cred + "}", secret.reveal())
        headers.append((header, Secret(filled)))
    return (tuple(headers) if ok else None), used
