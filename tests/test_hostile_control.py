"""Local boundaries as an attacker or bad luck meets them: the control socket, early
signals, SIGHUP with a hostile file, `voiced ctl volume`.

Every test here failed on 82fde82
(SIGINT while `voiced run` imports the daemon already exited 0; it stays as a guard).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, TIMEOUT, clean_env, voiced_cmd, write_config
from tests.test_appliance import daemon, log_text
from tests.test_e2e import ctl, wait_for_status
from tests.test_supervisor import running
from voiced import guard
from voiced.core.effects import State
from voiced.sim.server import SimOptions, SimServer

# ------------------------------------------------------------------ early signals

# Runs in the child before anything of voiced: the moment a named module is imported,
# the child signals itself (a deterministic "signal during start-up", whatever the
# machine's speed).
SITECUSTOMIZE = """
import os, signal, sys
_when, _sig = os.environ["VOICED_TEST_SIGNAL_AT"].split(":")
def _hook(event, args):
    if event == "import" and args[0] == _when:
        os.kill(os.getpid(), getattr(signal, _sig))
sys.addaudithook(_hook)
"""


@pytest.mark.parametrize(("sig", "module"), [
    ("SIGTERM", "yaml"),  # while the config module loads
    ("SIGINT", "yaml"),
    ("SIGTERM", "websockets"),  # while `voiced run` imports the daemon
    ("SIGINT", "websockets"),
])
def test_a_signal_during_start_up_is_a_clean_stop(tmp_path: Path, sig: str,
                                                  module: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cfg = write_config(tmp_path, "ws://127.0.0.1:9/v1/realtime")
    env = clean_env(PYTHONPATH=f"{site}:{REPO}", VOICED_TEST_SIGNAL_AT=f"{module}:{sig}")
    p = subprocess.run(voiced_cmd("run", "-c", str(cfg)), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]


def test_importing_the_cli_loads_almost_nothing() -> None:
    """The console script imports voiced.__main__ before main() can install the signal
    handlers: that import must be quick, so the window is the interpreter's start."""
    code = ("import sys; import voiced.__main__; "
            "print(sorted(m for m in ('yaml', 'asyncio', 'voiced.config', 'aiohttp') "
            "if m in sys.modules))")
    p = subprocess.run([*voiced_cmd()[:1], "-c", code], env=clean_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert p.stdout.strip() == "[]", p.stdout


# ------------------------------------------------------------------ the control socket


def ask(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        s.sendall(data)
        return dict(json.loads(s.makefile("rb").readline()))


async def test_hostile_requests_get_an_error_reply_and_no_fault(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard.reset_for_tests()
    async with SimServer() as sim, running(tmp_path, sim) as h:
        await h.wait(lambda: h.state == State.READY)
        path = tmp_path / "ctl.sock"
        for data, why in [
            (b"x" * 70_000 + b"\n", "too long"),
            (b"[" * 3000 + b"\n", "not a JSON"),
            (b'{"cmd": "status", "x": ' + b"[" * 2000 + b"\n", "not a JSON"),
            (b'{"cmd": ["status"]}\n', "unknown command"),
            (b'{"cmd": "volume", "percent": "loud"}\n', "0-100"),
            (b'{"cmd": "volume", "percent": 1e999}\n', "0-100"),
            (b'\xff\xfe{"cmd"\n', "not a JSON"),
        ]:
            reply = await asyncio.to_thread(ask, path, data)
            assert reply["ok"] is False and why in reply["error"], (data[:40], reply)
        # and the daemon still answers
        assert (await asyncio.to_thread(ask, path, b'{"cmd": "status"}\n'))["ok"] is True
    assert "Traceback" not in caplog.text and "Unhandled exception" not in caplog.text
    assert sum(guard.faults.values()) == 0, guard.faults


async def test_a_failing_handler_is_contained_and_answered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard.reset_for_tests()
    async with SimServer() as sim, running(tmp_path, sim) as h:
        await h.wait(lambda: h.state == State.READY)

        def broken() -> dict[str, Any]:
            raise RuntimeError("a bug")
        monkeypatch.setattr(h.sup, "status", broken)
        reply = await asyncio.to_thread(ask, tmp_path / "ctl.sock", b'{"cmd": "status"}\n')
        assert reply == {"ok": False, "error": "internal error (logged)"}
        assert guard.faults["control socket"] == 1


def _nofile_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.mark.timeout(120)
async def test_a_flood_of_idle_connections_does_not_starve_the_daemon(
        tmp_path: Path) -> None:
    """1,100 idle control connections against the unit's 1024 descriptors, held open
    by an attacker who reopens any the daemon closes: the Realtime reconnect still
    works, and nothing about descriptors or accepts is logged."""
    async with SimServer(SimOptions()) as sim:
        cfg = write_config(tmp_path, sim.url)
        log = (tmp_path / "voiced.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *voiced_cmd("run", "-c", str(cfg)), env=clean_env(), stderr=log,
            stdout=asyncio.subprocess.DEVNULL, preexec_fn=_nofile_1024)
        sock = tmp_path / "ctl.sock"
        stop = threading.Event()
        opened = [0]

        def attacker() -> None:
            held: list[socket.socket] = []
            while not stop.is_set():
                alive = []
                for s in held:  # the daemon closed some: reopen them
                    try:
                        gone = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        s.close()
                    else:
                        alive.append(s)
                held = alive
                for _ in range(min(1100 - len(held), 300)):
                    s = socket.socket(socket.AF_UNIX)
                    try:
                        s.connect(str(sock))
                    except OSError:
                        s.close()
                        break
                    held.append(s)
                    opened[0] += 1
                stop.wait(0.1)
            for s in held:
                s.close()

        try:
            await wait_for_status(cfg, lambda st: st["state"] == "ready", [])
            thread = threading.Thread(target=attacker, daemon=True)
            thread.start()
            while True:  # the attacker holds its 1,100 connections
                if opened[0] >= 1100:
                    break
                await asyncio.sleep(0.05)
            sessions = len(sim.sessions)
            sim.drop_connections()

            async def reconnected() -> None:
                while True:
                    if len(sim.sessions) > sessions and any(
                            e.get("type") == "session.update"
                            for e in sim.sessions[-1].received):
                        return
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(reconnected(), TIMEOUT)
            stop.set()
            await asyncio.to_thread(thread.join, TIMEOUT)
            st = await wait_for_status(cfg, lambda st: st["connected"], [])
            assert st["state"] == "ready"
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), TIMEOUT)
            log.close()
        text = log_text(tmp_path)
        assert code == 0, text[-3000:]
        for bad in ("Too many open files", "Traceback", "out of system resource",
                    "Unhandled exception"):
            assert bad not in text, text[-3000:]


async def test_the_control_socket_never_replaces_a_file_or_a_live_daemon(
        tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("an administrator's notes\n")
    cfg = write_config(tmp_path, "ws://127.0.0.1:9/v1/realtime",
                       control={"socket": str(precious)})
    p = await asyncio.to_thread(
        subprocess.run, voiced_cmd("run", "-c", str(cfg)), cwd=tmp_path, env=clean_env(),
        capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 78, p.stderr
    assert "voiced: config error: control.socket: " in p.stderr
    assert precious.read_text() == "an administrator's notes\n"

    # a second daemon on the socket of a running one refuses to take it over
    async with SimServer() as sim, running(tmp_path, sim) as h:
        await h.wait(lambda: h.state == State.READY)
        cfg = write_config(tmp_path, sim.url)
        p = await asyncio.to_thread(
            subprocess.run, voiced_cmd("run", "-c", str(cfg)), cwd=tmp_path,
            env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert p.returncode == 78, p.stderr
        assert "another daemon is listening" in p.stderr
        reply = await asyncio.to_thread(ask, tmp_path / "ctl.sock", b'{"cmd": "status"}\n')
        assert reply["ok"] is True


# ------------------------------------------------------------------ volume


def run_ctl(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(voiced_cmd("ctl", "-c", str(cfg), *args), env=clean_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


async def test_ctl_volume_reads_and_sets_and_the_model_has_a_floor(tmp_path: Path) -> None:
    """Contract §6: `voiced ctl volume [N]`. The model may not go below
    tools.volume_floor_percent (a misheard "quieter" must not silence the device for
    good); a person with `ctl` may."""
    async with SimServer() as sim, running(tmp_path, sim,
                                           tools={"volume_floor_percent": 15}) as h:
        await h.wait(lambda: h.state == State.READY)
        cfg = write_config(tmp_path, sim.url)
        p = await asyncio.to_thread(run_ctl, cfg, "volume")
        assert (p.returncode, p.stdout) == (0, "100\n"), p.stderr
        p = await asyncio.to_thread(run_ctl, cfg, "volume", "0")
        assert (p.returncode, p.stdout) == (0, "0\n"), p.stderr
        assert h.sup.volume.percent == 0
        for bad in ("101", "-1", "loud"):
            p = await asyncio.to_thread(run_ctl, cfg, "volume", bad)
            assert p.returncode == 2 and "0-100" in p.stderr, (bad, p.stderr)
        p = await asyncio.to_thread(run_ctl, cfg, "status", "5")
        assert p.returncode == 2, p.stderr
        out = json.loads(await h.sup.toolbox.run("set_volume", '{"action": "set", "percent": 0}'))
        assert out == {"volume_percent": 15, "note": "15 % is the lowest the model may set"}
        out = json.loads(await h.sup.toolbox.run("set_volume", '{"action": "down"}'))
        assert out["volume_percent"] == 15
        p = await asyncio.to_thread(run_ctl, cfg, "volume")
        assert p.stdout == "15\n"


# ------------------------------------------------------------------ SIGHUP


@pytest.mark.parametrize("case", ["alias-bomb-led-color", "huge-integer", "nested-brackets",
                                  "yaml-boolean-key", "config-too-large"])
async def test_sighup_with_a_hostile_file_is_rejected_and_ends_ready(
        tmp_path: Path, case: str) -> None:
    async with SimServer() as sim:
        cfg = write_config(tmp_path, sim.url)
        original = cfg.read_text()
        async with daemon(tmp_path, cfg) as (proc, notify):
            await notify.wait(lambda m: "STATUS=ready" in m, "STATUS=ready")
            hostile = (REPO / "tests" / "data" / "bad-configs" / f"{case}.yaml").read_text()
            if case == "config-too-large":
                hostile += ("# " + "x" * 98 + "\n") * 20_000
            cfg.write_text(hostile)
            proc.send_signal(signal.SIGHUP)
            msgs = await notify.wait(
                lambda m: "RELOADING=1" in m and "READY=1" in m[m.index("RELOADING=1"):],
                "READY=1 after RELOADING=1")
            assert any(x.startswith("STATUS=reload rejected") for x in msgs), msgs
            cfg.write_text(original)
            st = await ctl(cfg, "status")
            assert st["state"] == "ready", st
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        text = log_text(tmp_path)
        assert "reload rejected" in text and "Traceback" not in text, text[-3000:]


def test_the_unit_loads_a_credentials_directory_with_limits() -> None:
    unit = (REPO / "systemd" / "voiced.service").read_text()
    assert "LoadCredential=voiced:/etc/voiced/credentials" in unit
    for line in ("MemoryHigh=", "MemoryMax=", "LimitNOFILE=", "TasksMax=",
                 "StartLimitIntervalSec=", "StartLimitBurst="):
        assert f"\n{line}" in unit, line


def test_a_credential_from_a_loaded_directory_is_found(tmp_path: Path) -> None:
    """LoadCredential=voiced:/etc/voiced/credentials gives the service voiced_<file>."""
    from voiced import config

    (tmp_path / "voiced_ha_token").write_text("ha-token-0123456789\n")
    (tmp_path / "voiced_openai_api_key").write_text("sk-test-0123456789\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert config.read_credential("ha_token", env).reveal() == "ha-token-0123456789"  # type: ignore[union-attr]
    data = yaml.safe_load("realtime: {url: 'wss://api.openai.com/v1/realtime'}\n"
                          "audio: {backend: pyaudio}\n")
    s = config.parse(data, environ=env)
    assert s.realtime.api_key is not None
    assert s.realtime.api_key.reveal() == "sk-test-0123456789"
    assert os.stat(tmp_path / "voiced_ha_token").st_mode & 0o077  # written 0644 here:
    assert s.warnings and s.warnings[0][0] == "credentials.openai_api_key"  # a warning
