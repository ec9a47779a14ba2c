"""The bad-config corpus: every hostile or broken config is one clear error, exit 78.

``tests/data/bad-configs/*.yaml``, one case per file (its header says what the test sets
up; README.txt there). Each runs `voiced check-config` in a subprocess under a 1.5 GB
address-space limit: exit 78 within 10 s, ``voiced: config error: <key>`` on stderr, no
traceback, no secret in the output.
"""

from __future__ import annotations

import ast
import ctypes
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env, voiced_cmd

CORPUS = REPO / "tests" / "data" / "bad-configs"
CASES = sorted(CORPUS.glob("*.yaml"))
ADDRESS_SPACE = 1536 * 1024 * 1024
DEADLINE_S = 10.0
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _without_root_file_access() -> None:
    """Root, but unable to read a file its mode forbids (as any other user is): the
    capabilities that let root read anything leave the bounding set, so the program
    this child execs does not have them."""
    _limit_address_space()
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def header(path: Path) -> dict[str, list[str]]:
    """The ``# directive: value`` lines at the top of a case (directive may have a name:
    ``credential NAME``)."""
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.startswith("# "):
                break
            name, sep, value = line[2:].rstrip("\n").partition(": ")
            if sep and name.split(" ")[0] in ("expect", "credential", "env", "file",
                                              "secret", "pad-bytes"):
                out.setdefault(name, []).append(value)
    return out


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="voiced-bad-config-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _credential(path: Path, value: str) -> bool:
    """Make one credential file; True when the case must run as another user."""
    if value == "<directory>":
        path.mkdir()
    elif value == "<fifo>":
        os.mkfifo(path, 0o600)
    elif value == "<unreadable>":
        path.write_text("sk-test-unreadable-0123456789\n")
        path.chmod(0)
        return os.geteuid() == 0  # root reads anything unless told otherwise
    elif value.startswith("<sparse "):
        with path.open("wb") as f:
            f.truncate(int(value[len("<sparse "):-1]))
    else:
        data = ast.literal_eval(value)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        path.chmod(0o600)
    return False


def test_the_corpus_is_there() -> None:
    assert len(CASES) >= 30
    for case in CASES:
        assert header(case).get("expect"), f"{case.name} has no '# expect:' line"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_a_bad_config_is_one_error_and_exit_78(case: Path, scratch: Path) -> None:
    h = header(case)
    [expect] = h["expect"]
    cfg = scratch / case.name
    shutil.copyfile(case, cfg)
    for pad in h.get("pad-bytes", []):
        with cfg.open("a") as f:
            line = "# " + "x" * 98 + "\n"
            f.write(line * (int(pad) // len(line) + 1))
    creds = scratch / "credentials"
    creds.mkdir()
    other_user = False
    for key, values in h.items():
        if key.startswith("credential "):
            for value in values:
                other_user |= _credential(creds / key.split(" ", 1)[1], value)
    env = clean_env(CREDENTIALS_DIRECTORY=str(creds))
    for key, values in h.items():
        if key.startswith("env "):
            env[key.split(" ", 1)[1]] = ast.literal_eval(values[0])
    kept: dict[Path, bytes] = {}
    for key, values in h.items():
        if key.startswith("file "):
            path = scratch / key.split(" ", 1)[1]
            path.write_text(ast.literal_eval(values[0]))
            kept[path] = path.read_bytes()
    p = subprocess.run(voiced_cmd("check-config", "-c", str(cfg)), cwd=scratch, env=env,
                       capture_output=True, timeout=DEADLINE_S, check=False,
                       preexec_fn=_without_root_file_access if other_user
                       else _limit_address_space)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode == 78, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = p.stderr.decode().splitlines()
    assert lines and all(ln.startswith("voiced: config error: ") for ln in lines), out[-3000:]
    assert any(ln.startswith(f"voiced: config error: {expect}") for ln in lines), out[-3000:]
    for secret in h.get("secret", []):
        assert secret not in out, out
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{path.name} was changed"
