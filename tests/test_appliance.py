"""voiced as a systemd service: sd_notify over a real NOTIFY_SOCKET, the watchdog,
SIGHUP and SIGTERM, the unit's hardening, and the installer in a scratch root."""

from __future__ import annotations

import asyncio
import hashlib
import json
import marshal
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, TIMEOUT, clean_env, voiced_cmd, write_config
from tests.test_e2e import ctl, read_jsonl, wait_for_status
from voiced.sim.server import SimOptions, SimServer

UNIT = REPO / "systemd" / "voiced.service"


# Linux's SO_TIMESTAMPNS (asm-generic; Python's socket module does not name it): the
# kernel stamps each datagram with the time it arrived, whenever the test reads it
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("@ll")  # struct timespec: seconds, nanoseconds (native longs)


class NotifySocket:
    """A bound AF_UNIX datagram socket playing systemd's side of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path.unlink(missing_ok=True)  # left by an earlier daemon of the same test
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        # (when the datagram arrived, one assignment): the arrival is the kernel's stamp,
        # so two pings read in one poll keep their own times
        self.messages: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16))
            except BlockingIOError:
                break
            stamps = [TIMESPEC.unpack(raw[:TIMESPEC.size]) for level, kind, raw in ancillary
                      if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS]
            assert stamps, "the kernel did not time-stamp the datagram"
            sec, nsec = stamps[0]
            arrived = sec + nsec / 1e9
            self.messages += [(arrived, line) for line in data.decode().splitlines()]
        return [m for _, m in self.messages]

    async def wait(self, pred: Any, what: str) -> list[str]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msgs = self.poll()
            if pred(msgs):
                return msgs
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {what} in {self.poll()}")

    def times(self, message: str) -> list[float]:
        self.poll()
        return [t for t, m in self.messages if m == message]


@asynccontextmanager
async def daemon(tmp_path: Path, cfg: Path, **env: str) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, NotifySocket]]:
    notify = NotifySocket(tmp_path / "notify.sock")
    log = (tmp_path / "voiced.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *voiced_cmd("run", "-c", str(cfg)),
        env={**clean_env(), "NOTIFY_SOCKET": str(notify.path), **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=log)
    try:
        yield proc, notify
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        notify.sock.close()


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "voiced.log").read_text()


def test_status_is_one_capped_line_whatever_the_server_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17, finding 9: a close reason "bye\\nWATCHDOG=trigger" in STATUS= became an
    assignment of its own in the datagram."""
    from voiced.notify import STATUS_LIMIT, Notifier

    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    n = Notifier({"NOTIFY_SOCKET": str(notify.path)})
    n.status("reconnecting: server closed 4000: bye\nWATCHDOG=trigger\r\nREADY=1")
    n.status("x" * 100_000)
    n.status("Verbindung getrennt: Tschüss 👋")  # sdnotify alone drops non-Latin-1 text
    msgs = notify.poll()
    assert len(msgs) == 3, msgs
    assert msgs[0] == ("STATUS=reconnecting: server closed 4000: "
                       "bye\\nWATCHDOG=trigger\\r\\nREADY=1")
    assert msgs[1].startswith("STATUS=xxx") and len(msgs[1]) < STATUS_LIMIT + 40
    assert msgs[2] == "STATUS=Verbindung getrennt: Tschüss 👋"
    notify.sock.close()


async def test_notify_sequence_watchdog_and_a_blocked_loop(tmp_path: Path) -> None:
    async with SimServer(SimOptions()) as sim:
        cfg = write_config(tmp_path, sim.url)
        async with daemon(tmp_path, cfg, WATCHDOG_USEC="400000",
                          VOICED_WATCHDOG_DRILL_S="1.5") as (proc, notify):
            msgs = await notify.wait(lambda m: "STATUS=ready" in m, "STATUS=ready")
            assert msgs.index("READY=1") < msgs.index("STATUS=ready")
            assert any(m.startswith("STATUS=connecting") for m in msgs)
            await notify.wait(lambda m: m.count("WATCHDOG=1") >= 5, "watchdog pings")
            pings = notify.times("WATCHDOG=1")
            gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
            # never more often than every 0.2 s (half of 0.4 s: how often exactly is
            # test_the_watchdog_is_fed_at_half_its_interval's); a late one is the load's
            assert all(g >= 0.19 for g in gaps), gaps
            # the drill blocks the loop for 1.5 s: no pings then, pings again after
            proc.send_signal(signal.SIGUSR2)
            before = len(pings)
            await notify.wait(lambda m: m.count("WATCHDOG=1") >= before + 4, "resumed pings")
            pings = notify.times("WATCHDOG=1")
            gaps = [b - a for a, b in zip(pings[before - 1:], pings[before:], strict=False)]
            # a gap of at least the drill's 1.5 s: systemd (WatchdogSec=0.4 s) would have
            # killed us. Arrival stamps are exact, so the bound is the drill's own length
            assert max(gaps) >= 1.49, gaps
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            msgs = notify.poll()
            assert msgs[-1] == "STOPPING=1" or "STOPPING=1" in msgs[-3:], msgs[-5:]
    assert "watchdog drill" in log_text(tmp_path)


async def test_the_watchdog_is_fed_at_half_its_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC=400000: a ping, then 0.2 s, forever; and only for our own pid."""
    from voiced.notify import Notifier

    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))  # where sdnotify sends
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await Notifier(env).watchdog(sleep)
    assert waits == [0.2, 0.2, 0.2]
    assert notify.poll() == ["WATCHDOG=1"] * 3
    # for another process (a child that inherited the variables): no pings at all
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 0.4
    notify.sock.close()


async def test_no_watchdog_pings_unless_systemd_asks(tmp_path: Path) -> None:
    async with SimServer(SimOptions()) as sim:
        cfg = write_config(tmp_path, sim.url)
        async with daemon(tmp_path, cfg) as (proc, notify):  # no WATCHDOG_USEC
            await notify.wait(lambda m: "STATUS=ready" in m, "STATUS=ready")
            # ps and top say "voiced", not "python3"
            with open(f"/proc/{proc.pid}/comm") as comm:  # noqa: ASYNC230 - procfs, instant
                assert comm.read() == "voiced\n"
            await asyncio.sleep(0.5)
            assert "WATCHDOG=1" not in notify.poll()
            proc.send_signal(signal.SIGUSR2)  # no drill configured: logged and ignored
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert "SIGUSR2 ignored" in log_text(tmp_path)


async def test_ready_means_devices_open_not_network_up(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime")
    async with daemon(tmp_path, cfg) as (proc, notify):
        msgs = await notify.wait(
            lambda m: any(x.startswith("STATUS=reconnecting in") for x in m), "reconnecting")
        assert "READY=1" in msgs
        status = next(x for x in msgs if x.startswith("STATUS=reconnecting in"))
        assert re.match(r"STATUS=reconnecting in \d+ s: ", status), status
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_sighup_applies_a_valid_config_and_rejects_an_invalid_one(
        tmp_path: Path) -> None:
    async with SimServer(SimOptions()) as sim:
        cfg = write_config(tmp_path, sim.url)
        original = cfg.read_text()
        async with daemon(tmp_path, cfg) as (proc, notify):
            await notify.wait(lambda m: "STATUS=ready" in m, "STATUS=ready")
            data = yaml.safe_load(original)
            data["realtime"]["voice"] = "ash"
            data["audio"]["echo_tail_ms"] = 500
            cfg.write_text(yaml.safe_dump(data))
            proc.send_signal(signal.SIGHUP)
            msgs = await notify.wait(lambda m: any(x.startswith("STATUS=reloaded") for x in m),
                                     "reloaded")
            i = next(k for k, x in enumerate(msgs) if x == "RELOADING=1")
            assert msgs[i + 1].startswith("MONOTONIC_USEC=")
            assert "READY=1" in msgs[i + 2:]
            await asyncio.sleep(0.2)
            text = log_text(tmp_path)
            assert re.search(r"reloaded: .*realtime\.voice", text), text[-2000:]
            assert re.search(r"only applied after a restart .*: .*audio\.echo_tail_ms", text)

            cfg.write_text(original.replace("device_id:", "bogus_key: 1\ndevice_id:"))
            proc.send_signal(signal.SIGHUP)
            await notify.wait(lambda m: any(x.startswith("STATUS=reload rejected")
                                            for x in m), "reload rejected")
            await asyncio.sleep(0.2)
            text = log_text(tmp_path)
            assert "config error: bogus_key" in text and "reload rejected" in text
            still_valid = tmp_path / "ctl.yaml"  # `voiced ctl` reads the config too
            still_valid.write_text(original)
            st = await ctl(still_valid, "status")
            assert st["state"] == "ready", st  # the old config is still in force
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_sigterm_loses_no_record(tmp_path: Path) -> None:
    """Records waiting for a backend that is down stay on disk and go out after a restart."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    async with SimServer(SimOptions(pace=4)) as sim:
        cfg = write_config(tmp_path, sim.url, transcripts={
            "sink": "webhook", "webhook": {"url": f"http://127.0.0.1:{dead}/hook"},
            "retry_max_s": 1})
        async with daemon(tmp_path, cfg) as (proc, notify):
            await notify.wait(lambda m: "STATUS=ready" in m, "STATUS=ready")
            await ctl(cfg, "press")
            await wait_for_status(cfg, lambda st: st["outbox_pending"] >= 2, [])
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        pending = sorted((tmp_path / "outbox").glob("*.json"))
        assert len(pending) >= 2, list((tmp_path / "outbox").iterdir())
        ids = {json.loads(p.read_text())["id"] for p in pending}
        # the same outbox, now with a backend that works: everything is delivered
        data = yaml.safe_load(cfg.read_text())
        data["transcripts"] = {"sink": "jsonl", "jsonl": {"path": str(tmp_path / "t.jsonl")},
                               "outbox_dir": str(tmp_path / "outbox")}
        cfg.write_text(yaml.safe_dump(data))
        async with daemon(tmp_path, cfg) as (proc, notify):
            await wait_for_status(cfg, lambda st: st["outbox_pending"] == 0
                                  and st["state"] == "ready", [])
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert ids <= {r["id"] for r in read_jsonl(tmp_path / "t.jsonl")}


# ------------------------------------------------------------------ the unit

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (setup.sh test installs it)")


UNITS = [UNIT, REPO / "systemd" / "voiced-relay.service"]


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_is_at_most_2(unit: Path) -> None:
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, timeout=60, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([\d.]+)", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr
    assert float(m.group(1)) <= 2.0, p.stdout[-3000:]


@needs_systemd
@pytest.mark.parametrize("source", UNITS, ids=lambda u: u.name)
def test_unit_verifies_clean(tmp_path: Path, source: Path) -> None:
    # verify checks that ExecStart exists; point it at a binary that does
    unit = tmp_path / source.name
    unit.write_text(source.read_text().replace("/opt/voiced/venv/bin/voiced", "/bin/true"))
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_unit_has_the_appliance_settings() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "RestartPreventExitStatus=78", "RuntimeDirectory=voiced",
                 "StateDirectory=voiced", "ConfigurationDirectory=voiced", "User=voiced",
                 "SupplementaryGroups=audio gpio spi",
                 "LoadCredential=voiced:/etc/voiced/credentials", "DevicePolicy=closed",
                 # lgpio's pipes: "/" is read-only under ProtectSystem=strict
                 "Environment=LG_WD=/run/voiced", "WorkingDirectory=/run/voiced",
                 "Documentation=file:///opt/voiced/README.md"):
        assert line in text, line


def test_installer_updates_the_package_lists_before_installing() -> None:
    """Stale or missing lists give 404s: every apt-get install comes after an update."""
    text = (REPO / "systemd" / "install.sh").read_text()
    assert "apt_update_once() {\n" in text and "apt-get update" in text
    installs = [m.start() for m in re.finditer(r"apt-get install", text)]
    calls = [m.start() for m in re.finditer(r"\n *apt_update_once\b", text)]
    assert installs
    previous = 0
    for i in installs:  # an update is asked for between each install and the one before
        assert any(previous < c < i for c in calls), text[previous:i]
        previous = i


# The kernel's own MemoryDenyWriteExecute (prctl PR_SET_MDWE, Linux >= 6.3): no memory
# that is writable and executable, inherited across exec, as the unit's setting enforces.
UNDER_MDWE = ("import ctypes, os, sys\n"
              "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0):  # PR_SET_MDWE, REFUSE_EXEC_GAIN\n"
              "    sys.exit(99)\n"
              "os.execv(sys.argv[1], sys.argv[1:])")


def under_mdwe(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-c", UNDER_MDWE, *cmd], capture_output=True,
                       text=True, timeout=TIMEOUT, check=False, **kw)
    if p.returncode == 99:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
    return p


def test_the_code_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the whole pipeline (ctypes, libsoxr,
    websockets, the simulator) and PortAudio capture at 48 kHz resampled by libsoxr must
    work in a process the kernel refuses writable+executable memory."""
    from tests.test_pyaudio import CAPTURE, clocked_mic

    assert "MemoryDenyWriteExecute=yes" in UNIT.read_text()
    probe = under_mdwe([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"])
    assert "Permission denied" in probe.stderr  # the restriction really is on
    p = under_mdwe([*voiced_cmd("demo", "--out", str(tmp_path / "demo"))], env=clean_env())
    assert p.returncode == 0 and "assistant:" in p.stdout, p.stdout + p.stderr
    p = under_mdwe([sys.executable, "-c", CAPTURE.format(rate=48000, nbytes=24000 * 2, block=20)],
                   env=clocked_mic(tmp_path, bytes(48000 * 2 * 3)))
    assert p.returncode == 0 and "RATE 48000" in p.stderr, p.stderr[-2000:]


# ------------------------------------------------------------------ the installer


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, content hash) for everything under root but the venv."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if rel.startswith("opt/voiced/venv/") or rel.startswith(("etc/passwd-", "etc/group-",
                                                                  "etc/shadow-",
                                                                  "etc/gshadow-")):
            continue
        st = p.lstat()
        digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                  if stat.S_ISREG(st.st_mode) else os.readlink(p) if p.is_symlink() else "")
        out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\naudio:x:29:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\naudio:*::\n")
    os.chmod(root / "etc" / "shadow", 0o640)
    return root


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # run from elsewhere than the repo: the script must not depend on the cwd
    return subprocess.run([str(REPO / "systemd" / "install.sh"), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=600, check=False,
                          env=clean_env(), cwd=root.parent)


@pytest.mark.timeout(900)
@pytest.mark.skipif(os.geteuid() != 0, reason="the installer creates users and owners")
def test_installer_into_a_scratch_root_twice_then_uninstall(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    p = install(root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Next:" in p.stdout
    users = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/passwd").read_text()
             .splitlines()}
    assert "voiced" in users and users["voiced"][6] == "/usr/sbin/nologin"
    groups = {ln.split(":")[0]: ln.split(":") for ln in (root / "etc/group").read_text()
              .splitlines()}
    for g in ("audio", "gpio", "spi"):
        assert "voiced" in groups[g][3].split(","), (g, groups[g])
    uid, gid = int(users["voiced"][2]), int(users["voiced"][3])
    snap = snapshot(root)
    assert snap["etc/voiced"][:3] == (0o750, 0, gid)
    assert snap["etc/voiced/voiced.yaml"][:3] == (0o640, 0, gid)
    assert snap["etc/voiced/credentials"][:3] == (0o700, 0, 0)
    assert snap["etc/voiced/credentials/openai_api_key"][:3] == (0o600, 0, 0)
    assert snap["var/lib/voiced"][:3] == (0o750, uid, gid)
    assert snap["etc/systemd/system/voiced.service"][:3] == (0o644, 0, 0)
    assert snap["etc/systemd/system/voiced.service"][3] == hashlib.sha256(
        UNIT.read_bytes()).hexdigest()
    assert snap["usr/local/bin/voiced"][3] == "/opt/voiced/venv/bin/voiced"
    # the unit's Documentation= is installed
    assert snap["opt/voiced/README.md"][3] == hashlib.sha256(
        (REPO / "README.md").read_bytes()).hexdigest()
    assert (root / "opt/voiced/docs/architecture.md").is_file()
    # the venv names /opt/voiced/venv, where the image runs it, not the build path
    venv = root / "opt/voiced/venv"
    venv_voiced = venv / "bin/voiced"
    assert venv_voiced.read_text().startswith("#!/opt/voiced/venv/bin/python")
    for f in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            assert str(root) not in f.read_text(errors="replace"), f
    assert 'VIRTUAL_ENV="/opt/voiced/venv"' in (venv / "bin/activate").read_text()
    pyc = next(venv.glob("lib/python3*/site-packages/voiced/config/__pycache__/settings.*.pyc"))
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename.startswith("/opt/voiced/venv/lib/"), code.co_filename
    # runnable from here only through its interpreter (its shebang names the image's path)
    assert subprocess.run([str(venv / "bin/python"), str(venv_voiced), "--help"],
                          capture_output=True, timeout=60, check=False).returncode == 0

    # an installer-edited config survives, and a second run changes nothing
    cfg = root / "etc/voiced/voiced.yaml"
    cfg.write_text(cfg.read_text() + "# edited by the installer\n")
    snap = snapshot(root)
    p = install(root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert snapshot(root) == snap

    p = install(root, "--uninstall")
    assert p.returncode == 0, p.stderr
    assert not (root / "opt/voiced").exists()
    assert not (root / "etc/systemd/system/voiced.service").exists()
    assert cfg.read_text().endswith("# edited by the installer\n")  # kept
    assert (root / "var/lib/voiced").is_dir()
    p = install(root, "--uninstall", "--purge")
    assert p.returncode == 0, p.stderr
    assert not (root / "etc/voiced").exists() and not (root / "var/lib/voiced").exists()
    assert "voiced:" not in (root / "etc/passwd").read_text()


def test_malloc_arenas_can_be_capped() -> None:
    """glibc accepts the cap `voiced run` sets before any thread starts (mallopt returns
    0 for an option it rejects)."""
    from voiced.threads import limit_malloc_arenas

    assert limit_malloc_arenas()
