"""voiced-relay.service's settings, and `voiced relay` speaking sd_notify over a real
NOTIFY_SOCKET (READY, STATUS, WATCHDOG, STOPPING on SIGTERM)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from tests.backends import postgres
from tests.conftest import REPO, TIMEOUT, voiced_cmd
from tests.relay_rig import relay_config, relay_env
from tests.test_appliance import NotifySocket
from voiced.sim.server import SimServer

UNIT = REPO / "systemd" / "voiced-relay.service"


# its exposure and systemd-analyze verify: tests/test_appliance.py (both units)


def test_relay_unit_has_the_service_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "RestartPreventExitStatus=78", "StateDirectory=voiced-relay",
                 "ExecStart=/opt/voiced/venv/bin/voiced relay -c /etc/voiced/relay.yaml",
                 "LoadCredential=openai_api_key:/etc/voiced/relay-credentials/",
                 "LoadCredential=postgres_dsn:/etc/voiced/relay-credentials/",
                 "MemoryDenyWriteExecute=yes", "PrivateDevices=yes"):
        assert line in text, line
    # the spool the unit may write is the config's default
    example = (REPO / "config" / "relay.example.yaml").read_text()
    assert "dir: /var/lib/voiced-relay/spool" in example


async def test_the_relay_speaks_sd_notify_and_stops_cleanly(tmp_path: Path) -> None:
    with postgres() as dsn:
        async with SimServer() as sim:
            cfg = relay_config(tmp_path, sim.url)
            notify = NotifySocket(tmp_path / "notify.sock")
            proc = await asyncio.create_subprocess_exec(
                *voiced_cmd("relay", "-c", str(cfg)),
                env=relay_env(dsn, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="400000"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                await notify.wait(lambda m: "READY=1" in m, "READY=1")
                await notify.wait(lambda m: m.count("WATCHDOG=1") >= 3, "watchdog pings")
                status = [m for m in notify.poll() if m.startswith("STATUS=")]
                assert status and "database ok" in status[-1], status
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
                assert "STOPPING=1" in notify.poll()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                notify.sock.close()
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err


def test_a_missing_upstream_key_is_a_config_error(tmp_path: Path) -> None:
    cfg = relay_config(tmp_path, "wss://api.openai.com/v1/realtime")
    p = subprocess.run(voiced_cmd("relay", "-c", str(cfg)), env=relay_env("x"),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 78
    assert p.stderr.strip() == ("voiced: config error: credentials.openai_api_key: missing: "
                                "put it in $CREDENTIALS_DIRECTORY/openai_api_key or "
                                "$OPENAI_API_KEY (needed for api.openai.com)")
