"""The `voiced` command line: argument parsing, logging set-up, and the only sys.exit.

SIGTERM and SIGINT are handled before anything else is imported: a stop asked for while
the program starts is a clean exit 0 (the contract), never a death by signal or a
KeyboardInterrupt traceback. That is why this module imports only the standard library
at the top, and each command imports what it needs.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Final

EX_OK: Final = 0
EX_FAIL: Final = 1
EX_USAGE: Final = 2
EX_CONFIG: Final = 78


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGTERM/SIGINT before the daemon's own handlers: stop cleanly, exit 0."""
    raise SystemExit(EX_OK)


def install_early_signal_handlers() -> dict[signal.Signals, object]:
    """Handle SIGTERM and SIGINT as a clean stop from now on; return what was there."""
    old: dict[signal.Signals, object] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.getsignal(sig)
        signal.signal(sig, _stop_while_starting)
    return old


if __name__ == "__main__":  # python -m voiced: as early as can be
    install_early_signal_handlers()

import argparse  # noqa: E402 - after the signal handlers, on purpose
import logging  # noqa: E402
import os  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from voiced import __version__  # noqa: E402

if TYPE_CHECKING:
    from voiced.config import Settings

logger = logging.getLogger("voiced")


def setup_logging(level: str | int) -> None:
    """Log to stderr for journald (:func:`voiced.guard.setup_logging`)."""
    from voiced import guard

    guard.setup_logging(level)


def config_path(arg: str | None) -> Path:
    """``-c``, else ``$VOICED_CONFIG``, else /etc/voiced/voiced.yaml (contract §1)."""
    from voiced.config import DEFAULT_CONFIG_PATH

    return Path(arg or os.environ.get("VOICED_CONFIG") or DEFAULT_CONFIG_PATH)


def use_installed_credentials() -> None:
    """Read secrets where install.sh puts them when systemd does not say where.

    Under the unit, systemd sets ``$CREDENTIALS_DIRECTORY``. From a shell (``sudo voiced
    check-config``) it is unset: then /etc/voiced/credentials is used, if this user may
    read it. Set in the process's environment, so a SIGHUP reload reads the same place.
    Set but empty, it means none (the tests use that).
    """
    from voiced.config import secrets

    installed = secrets.INSTALLED_CREDENTIALS_DIR
    if "CREDENTIALS_DIRECTORY" not in os.environ and installed.is_dir() \
            and os.access(installed, os.R_OK | os.X_OK):
        os.environ["CREDENTIALS_DIRECTORY"] = str(installed)


def _load(args: argparse.Namespace) -> Settings:
    from voiced.config import load

    use_installed_credentials()
    return load(config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    """`voiced run`: the daemon."""
    import asyncio

    settings = _load(args)
    setup_logging(logging.DEBUG if args.debug else settings.log_level)
    for key, message in settings.warnings:
        logger.warning("%s: %s", key, message)
    from voiced.supervisor.daemon import Supervisor
    from voiced.threads import limit_malloc_arenas, name_this_thread

    limit_malloc_arenas()  # before any thread starts: a long-running daemon's RSS stays flat
    name_this_thread("voiced")  # the event loop; ps, top and "device busy: held by" say so
    return asyncio.run(Supervisor(settings).run())


def cmd_check_config(args: argparse.Namespace) -> int:
    """`voiced check-config`: validate and summarise."""
    from voiced import config
    from voiced.config import credential_source, load

    path = config_path(args.config)
    use_installed_credentials()
    s = load(path)
    for key, message in s.warnings:
        print(f"voiced: warning: {key}: {message}", file=sys.stderr)
    rt = s.realtime
    print(f"{path}: OK")
    print(f"  device_id    {s.device_id}")
    target = f"relay agent {rt.relay.agent_id}" if rt.relay else f"model {rt.model}"
    print(f"  realtime     {rt.url} ({target}, voice {rt.voice}, "
          f"turns: {rt.turn_detection.type})")
    if rt.api_key:  # where it came from: which of several places won is not obvious
        print(f"  api key      set (from {credential_source('openai_api_key', os.environ)})")
    else:
        print("  api key      not needed (loopback)")
    a = s.audio
    if a.echo_setting == "auto":
        print(f"  echo         auto: {a.echo} ({a.echo_reason})")
    if a.backend == "file":
        print(f"  audio        file: {a.input.file} -> {a.output.file} ({a.echo})")
    else:
        print(f"  audio        pyaudio: in {a.input.device!r}, out {a.output.device!r} "
              f"({a.echo})")
        print(f"  resampler    {_resampler()}")
    button = f"pin {s.button.pin}, {s.button.mode}" if s.button else "none"
    print(f"  button       {button}")
    print(f"  leds         {s.leds.driver}")
    sink = s.transcripts.sink
    extra = f" -> {s.transcripts.jsonl_path}" if sink == "jsonl" else ""
    print(f"  transcripts  {sink}{extra}")
    env = config.CONTROL_SOCKET_ENV
    over = f" (from ${env})" if os.environ.get(env) else ""
    print(f"  control      {s.control.socket}{over}")
    return EX_OK


def _resampler() -> str:
    """The resampler library's version, or what to install (24 kHz devices work without)."""
    from voiced.audio import libsoxr
    from voiced.errors import AudioDeviceError

    try:
        return libsoxr.version()
    except AudioDeviceError as e:
        return (f"MISSING: {e}; without it only devices that open at 24 kHz work, at 100 % "
                "volume, and client_vad does not")


def cmd_ctl(args: argparse.Namespace) -> int:
    """`voiced ctl`: talk to a running daemon."""
    import json

    from voiced.config import load
    from voiced.control import request

    extra: dict[str, int] = {}
    if args.value is not None:
        if args.command != "volume":
            print(f"voiced: ctl {args.command} takes no value", file=sys.stderr)
            return EX_USAGE
        try:
            percent = int(args.value)
        except ValueError:
            percent = -1
        if not 0 <= percent <= 100:
            print(f"voiced: ctl volume: expected a volume in percent, 0-100, got "
                  f"{args.value!r}", file=sys.stderr)
            return EX_USAGE
        extra["percent"] = percent
    # only control.socket matters here: a user in the voiced group may drive the daemon
    # without being able to read its secrets
    path = load(config_path(args.config), require_secrets=False).control.socket
    try:
        reply = request(path, args.command, **extra)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"voiced: no daemon is listening on {path} (is `voiced run` running?)",
              file=sys.stderr)
        return EX_FAIL
    except (OSError, ValueError) as e:
        print(f"voiced: control socket {path}: {e}", file=sys.stderr)
        return EX_FAIL
    if not reply.get("ok"):
        print(f"voiced: {reply.get('error')}", file=sys.stderr)
        return EX_FAIL
    if args.command == "status":
        print(json.dumps(reply["status"]))
    elif args.command == "volume":
        print(reply["volume_percent"])
    else:
        print(reply["status"]["state"])
    return EX_OK


def cmd_test_leds(args: argparse.Namespace) -> int:
    """`voiced test-leds`: show every orb state in turn, printing its name."""
    import asyncio

    from voiced.core.effects import State
    from voiced.orb import Animator
    from voiced.supervisor.builders import build_orb

    s = _load(args)
    setup_logging(logging.DEBUG if args.debug else logging.WARNING)
    driver = build_orb(s)
    if driver is None:
        print("leds.driver is none: nothing lights up; the states are:")

    async def show_all() -> None:
        orb = Animator(driver, s.leds.patterns, fps=s.leds.fps)
        task = asyncio.create_task(orb.run())
        try:
            for state in State:
                p = s.leds.patterns[str(state)]
                print(f"{state}: {p.effect} rgb{p.color} every {p.period_s:g} s", flush=True)
                orb.set_state(str(state))
                await asyncio.sleep(args.seconds if driver is not None else 0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(show_all())
    return EX_OK


def cmd_test_button(args: argparse.Namespace) -> int:
    """`voiced test-button`: print each gesture as it is detected."""
    import asyncio

    from voiced.supervisor.builders import build_button

    s = _load(args)
    setup_logging(logging.DEBUG if args.debug else logging.WARNING)
    if s.button is None:
        print("voiced: the config has no button: section", file=sys.stderr)
        return EX_FAIL

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        button = build_button(s, lambda g: print(g, flush=True), loop)
        print(f"press the button on pin {s.button.pin if s.button else '?'} "
              f"({args.seconds:g} s; Ctrl-C ends)", flush=True)
        try:
            await asyncio.sleep(args.seconds)
        finally:
            if button is not None:
                button.close()

    asyncio.run(watch())
    return EX_OK


def cmd_sim(args: argparse.Namespace) -> int:
    """`voiced sim`: the local Realtime-compatible server."""
    import asyncio

    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    from voiced.sim.server import SimOptions, serve_forever

    opts = SimOptions(require_key=args.require_key, max_session_s=args.max_session_s,
                      pace=args.pace, drop_mid_response=args.drop_mid_response,
                      stall_after_s=args.stall_after_s, malformed_every=args.malformed_every,
                      unknown_every=args.unknown_every, user_transcript=args.user_transcript,
                      transcription_failures=args.transcription_failures)
    return asyncio.run(serve_forever(args.host, args.port, opts))


def cmd_demo(args: argparse.Namespace) -> int:
    """`voiced demo`: a whole spoken exchange with no hardware, key or network."""
    import asyncio

    from voiced.demo import run_demo

    return asyncio.run(run_demo(out_dir=Path(args.out) if args.out else None,
                                debug=args.debug, api=args.api))


def cmd_devices(args: argparse.Namespace) -> int:
    """`voiced devices`: list audio devices."""
    from voiced.audio.tools import print_devices

    return print_devices(sys.stdout)


def cmd_test_audio(args: argparse.Namespace) -> int:
    """`voiced test-audio`: record from the configured mic and play it back."""
    import asyncio

    from voiced.audio.tools import test_audio
    from voiced.errors import AudioDeviceError
    from voiced.supervisor.builders import build_audio

    settings = _load(args)
    setup_logging(logging.DEBUG if args.debug else logging.WARNING)
    source, sink = build_audio(settings)
    try:
        return asyncio.run(test_audio(source, sink, args.seconds, sys.stdout))
    except AudioDeviceError as e:
        print(f"voiced: audio device: {e}", file=sys.stderr)
        return EX_FAIL


def cmd_relay(args: argparse.Namespace) -> int:
    """`voiced relay`: the relay server, and its device tokens."""
    from voiced.relay import cli

    return cli.run(args, setup_logging)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from voiced.config import DEFAULT_CONFIG_PATH

    p = argparse.ArgumentParser(prog="voiced", description=__doc__)
    p.add_argument("--version", action="version", version=f"voiced {__version__}")
    p.add_argument("--debug", action="store_true", help="log at DEBUG")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("-c", "--config", help=f"config file (default $VOICED_CONFIG or "
                                               f"{DEFAULT_CONFIG_PATH})")
        sp.add_argument("--debug", action="store_true", help="log at DEBUG")
        return sp

    with_config("run", "run the daemon").set_defaults(func=cmd_run)
    with_config("check-config", "validate the config").set_defaults(func=cmd_check_config)
    tl = with_config("test-leds", "show every orb state in turn")
    tl.add_argument("--seconds", type=float, default=2.0, help="per state")
    tl.set_defaults(func=cmd_test_leds)
    tb = with_config("test-button", "print each button gesture as it is detected")
    tb.add_argument("--seconds", type=float, default=60.0)
    tb.set_defaults(func=cmd_test_button)
    ta = with_config("test-audio", "record and play back")
    ta.add_argument("--seconds", type=float, default=3.0)
    ta.set_defaults(func=cmd_test_audio)
    sub.add_parser("devices", help="list audio devices").set_defaults(func=cmd_devices)
    ctl = with_config("ctl", "talk to the running daemon")
    ctl.add_argument("command", choices=["status", "press", "long-press", "interrupt",
                                         "volume"])
    ctl.add_argument("value", nargs="?", help="volume: the new volume in percent (0-100)")
    ctl.set_defaults(func=cmd_ctl)
    sim = sub.add_parser("sim", help="local Realtime-compatible server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--require-key", default=None,
                     help="refuse connections whose bearer is not this key")
    sim.add_argument("--max-session-s", type=float, default=3600.0,
                     help="end sessions with session_expired + close 1001 after this long")
    sim.add_argument("--pace", type=float, default=1.0,
                     help="stream reply audio at this multiple of real time")
    sim.add_argument("--drop-mid-response", type=int, default=0, metavar="N",
                     help="fault: drop the connection halfway through the next N replies")
    sim.add_argument("--stall-after-s", type=float, default=None,
                     help="fault: go silent (no events, no pongs) this long after connect")
    sim.add_argument("--malformed-every", type=int, default=0, metavar="N",
                     help="fault: send a malformed frame after every N events")
    sim.add_argument("--unknown-every", type=int, default=0, metavar="N",
                     help="fault: send an unknown event type after every N events")
    sim.add_argument("--user-transcript", choices=["late", "early"], default="late",
                     help="the user's transcript after the reply has started (upstream's "
                     "usual order) or before its response.created")
    sim.add_argument("--transcription-failures", type=int, default=0, metavar="N",
                     help="fault: the next N input transcriptions fail")
    sim.add_argument("--debug", action="store_true")
    sim.set_defaults(func=cmd_sim)
    demo = sub.add_parser("demo", help="a spoken exchange with no hardware, key or network")
    demo.add_argument("--out", help="directory for the demo's files (default: a temp dir)")
    demo.add_argument("--api", choices=("realtime", "live"), default="realtime",
                      help="the backend: the Realtime API (default) or GPT-Live")
    demo.add_argument("--debug", action="store_true")
    demo.set_defaults(func=cmd_demo)
    from voiced.relay.cli import add_parser as add_relay_parser

    add_relay_parser(sub).set_defaults(func=cmd_relay)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    old = install_early_signal_handlers()
    try:
        from voiced.errors import ConfigError

        args = build_parser().parse_args(argv)
        try:
            return int(args.func(args))
        except ConfigError as e:
            for line in e.lines():
                print(line, file=sys.stderr)
            return EX_CONFIG
        except KeyboardInterrupt:
            return EX_OK
    finally:  # an in-process caller (the tests) gets its own handlers back
        for sig, handler in old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
