"""The `voiced relay` commands: serve, add-device, revoke-device, list-devices.

``voiced relay -c FILE`` serves; ``voiced relay add-device NAME -c FILE`` prints a new
token once; ``voiced relay revoke-device NAME -c FILE``. Config path: ``-c``, else
``$VOICED_RELAY_CONFIG``, else /etc/voiced/relay.yaml. Config errors exit 78 (the
caller turns ``ConfigError`` into the contract's lines).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from voiced.relay import config as relay_config
from voiced.relay.config import DEVICE_NAME_RE, RelaySettings

EX_OK: Final = 0
EX_FAIL: Final = 1
EX_USAGE: Final = 2
ACTIONS: Final = ("add-device", "revoke-device", "list-devices")


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
               ) -> argparse.ArgumentParser:
    """Add `relay` to the top-level subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "relay", help="the relay server devices connect to (keeps the API key, writes "
                      "transcripts to PostgreSQL)")
    p.add_argument("action", nargs="?", choices=ACTIONS,
                   help="manage device tokens instead of serving")
    p.add_argument("name", nargs="?", help="the device name (add-device, revoke-device)")
    p.add_argument("-c", "--config", help=f"relay config (default $"
                                          f"{relay_config.RELAY_CONFIG_ENV} or "
                                          f"{relay_config.DEFAULT_RELAY_CONFIG})")
    p.add_argument("--debug", action="store_true", help="log at DEBUG")
    return p


def _load(args: argparse.Namespace, *, require_secrets: bool = True) -> RelaySettings:
    path = Path(args.config or os.environ.get(relay_config.RELAY_CONFIG_ENV)
                or relay_config.DEFAULT_RELAY_CONFIG)
    env = dict(os.environ)
    installed = relay_config.INSTALLED_RELAY_CREDENTIALS_DIR
    # from a shell (no systemd): the installed credentials, if this user may read them
    if "CREDENTIALS_DIRECTORY" not in env and installed.is_dir() \
            and os.access(installed, os.R_OK | os.X_OK):
        env["CREDENTIALS_DIRECTORY"] = str(installed)
    return relay_config.load(path, environ=env, require_secrets=require_secrets)


def run(args: argparse.Namespace, setup_logging: Callable[[str | int], None]) -> int:
    """Dispatch `voiced relay [action]`."""
    if args.action is None:
        if args.name is not None:
            print(f"voiced: relay: unexpected argument {args.name!r}", file=sys.stderr)
            return EX_USAGE
        settings = _load(args)
        setup_logging(logging.DEBUG if args.debug else settings.log_level)
        from voiced.relay.server import run_relay
        from voiced.threads import name_this_thread

        name_this_thread("voiced-relay")
        return asyncio.run(run_relay(settings))
    if args.action != "list-devices" and (not args.name or not DEVICE_NAME_RE.match(args.name)):
        print(f"voiced: relay {args.action}: give a device name of 1-64 letters, digits, "
              "_ . or - (e.g. kitchen)", file=sys.stderr)
        return EX_USAGE
    settings = _load(args, require_secrets=False)
    setup_logging(logging.DEBUG if args.debug else logging.WARNING)
    return asyncio.run(_manage(settings, args.action, args.name))


async def _manage(settings: RelaySettings, action: str, name: str | None) -> int:
    from voiced.relay.store import DeviceExists, Store, StoreUnavailable

    store = Store(settings.database)
    await store.open()
    try:
        await store.prepare(())
        if action == "add-device":
            assert name is not None
            token = await store.add_device(name)
            print(token)
            print(f"voiced: relay: device {name} added. This token is shown once: put it in "
                  "the device's openai_api_key credential.", file=sys.stderr)
        elif action == "revoke-device":
            assert name is not None
            if not await store.revoke_device(name):
                print(f"voiced: relay: no device {name} with a live token", file=sys.stderr)
                return EX_FAIL
            print(f"voiced: relay: device {name} revoked; new connections are refused, open "
                  "ones are closed within 35 s", file=sys.stderr)
        else:
            for dev, created, revoked in await store.devices():
                print(f"{dev}\tadded {created}\t" + (f"revoked {revoked}" if revoked
                                                     else "active"))
    except DeviceExists as e:
        print(f"voiced: relay: {e}", file=sys.stderr)
        return EX_FAIL
    except StoreUnavailable as e:
        print(f"voiced: relay: {e}", file=sys.stderr)
        return EX_FAIL
    finally:
        await store.aclose()
    return EX_OK
