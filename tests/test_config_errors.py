"""Config validation as an installer meets it: `voiced check-config` on bad files.

Each case is a YAML file and the dotted key its error must name. Every one must exit 78
with `voiced: config error: <key>: ...` on stderr and no traceback.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUESTION_WAV, REPO, TIMEOUT, clean_env, voiced_cmd
from voiced import config
from voiced.errors import ConfigError

BASE = f"""
device_id: kitchen
realtime: {{url: "ws://127.0.0.1:8765/v1/realtime"}}
audio: {{backend: file, input: {{file: "{QUESTION_WAV}"}}, output: {{file: out.wav}}}}
"""

# (id, yaml, dotted key the error names)
BAD: list[tuple[str, str, str]] = [
    ("unknown-top-level-key", BASE + "colour: blue\n", "colour"),
    ("unknown-nested-key", BASE.replace("realtime: {", "realtime: {tempo: 3, "),
     "realtime.tempo"),
    ("url-wrong-type", BASE.replace('url: "ws://127.0.0.1:8765/v1/realtime"', "url: 5"),
     "realtime.url"),
    ("url-http-scheme", BASE.replace("ws://127.0.0.1", "http://127.0.0.1"), "realtime.url"),
    ("unknown-voice", BASE.replace("realtime: {", "realtime: {voice: bob, "),
     "realtime.voice"),
    ("beta-preview-model", BASE.replace(
        "realtime: {", "realtime: {model: gpt-4o-realtime-preview, "), "realtime.model"),
    ("missing-api-key-for-openai", BASE.replace(
        "ws://127.0.0.1:8765/v1/realtime", "wss://api.openai.com/v1/realtime"),
     "credentials.openai_api_key"),
    ("threshold-out-of-range", BASE.replace(
        "realtime: {", "realtime: {turn_detection: {threshold: 1.5}, "),
     "realtime.turn_detection.threshold"),
    ("unknown-turn-detection", BASE.replace(
        "realtime: {", "realtime: {turn_detection: {type: magic}, "),
     "realtime.turn_detection.type"),
    ("bad-language-code", BASE.replace(
        "realtime: {", "realtime: {transcription: {language: german}, "),
     "realtime.transcription.language"),
    ("reconnect-max-below-min", BASE.replace(
        "realtime: {", "realtime: {reconnect_min_s: 5, reconnect_max_s: 1, "),
     "realtime.reconnect_max_s"),
    ("unknown-session-owner", BASE.replace(
        "realtime: {", "realtime: {relay: {agent_id: a, session_owner: both}, "),
     "realtime.relay.session_owner"),
    ("unknown-audio-backend", BASE.replace("backend: file", "backend: jack"),
     "audio.backend"),
    ("missing-input-wav", BASE.replace(str(QUESTION_WAV), "/nonexistent/q.wav"),
     "audio.input.file"),
    ("frame-ms-not-multiple-of-10", BASE.replace("audio: {", "audio: {frame_ms: 25, "),
     "audio.frame_ms"),
    ("block-ms-not-multiple-of-frame", BASE.replace("audio: {", "audio: {block_ms: 50, "),
     "audio.block_ms"),
    ("echo-tail-negative", BASE.replace("audio: {", "audio: {echo_tail_ms: -1, "),
     "audio.echo_tail_ms"),
    ("negative-device-index", BASE.replace("input: {", "input: {device: -2, "),
     "audio.input.device"),
    ("jitter-as-string", BASE.replace("audio: {", 'audio: {jitter_ms: "80", '),
     "audio.jitter_ms"),
    ("speaker-idle-zero", BASE.replace("audio: {", "audio: {speaker_idle_s: 0, "),
     "audio.speaker_idle_s"),
    ("reopen-cap-below-first-retry",
     BASE.replace("audio: {", "audio: {reopen_s: 5, reopen_max_s: 2, "), "audio.reopen_max_s"),
    ("button-bad-pin", BASE + "button: {pin: GPIO99x}\n", "button.pin"),
    ("button-bad-mode", BASE + "button: {pin: 17, mode: tap_dance}\n", "button.mode"),
    ("button-hold-too-short", BASE + "button: {pin: 17, hold_time_s: 0.01}\n",
     "button.hold_time_s"),
    ("led-unknown-driver", BASE + "leds: {driver: neopixel}\n", "leds.driver"),
    ("led-gpio-without-pins", BASE + "leds: {driver: gpio, kind: rgb}\n", "leds.pins"),
    ("led-brightness-range", BASE + "leds: {driver: apa102, brightness: 40}\n",
     "leds.brightness"),
    ("led-fps-over-30", BASE + "leds: {driver: apa102, fps: 120}\n", "leds.fps"),
    ("led-bad-colour", BASE + "leds: {patterns: {ready: {color: blurple}}}\n",
     "leds.patterns.ready"),
    ("unknown-sink", BASE + "transcripts: {sink: kafka}\n", "transcripts.sink"),
    ("webhook-without-url", BASE + "transcripts: {sink: webhook}\n",
     "transcripts.webhook"),
    ("webhook-ftp-url", BASE + "transcripts: {sink: webhook, webhook: {url: ftp://x}}\n",
     "transcripts.webhook.url"),
    ("outbox-bound-too-small", BASE + "transcripts: {sink: jsonl, max_records: 0}\n",
     "transcripts.max_records"),
    ("log-level", BASE + "log_level: chatty\n", "log_level"),
    ("device-id-not-a-string", BASE.replace("device_id: kitchen", "device_id: [1, 2]"),
     "device_id"),
]


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(text)
    return subprocess.run(voiced_cmd("check-config", "-c", str(cfg)), cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)


@pytest.mark.parametrize(("text", "key"), [(t, k) for _, t, k in BAD],
                         ids=[i for i, _, _ in BAD])
def test_bad_config_is_exit_78_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    p = check(tmp_path, text)
    assert p.returncode == 78, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("voiced: config error: ")]
    assert any(ln.startswith(f"voiced: config error: {key}") for ln in lines), p.stderr


def test_the_base_of_the_table_is_itself_valid(tmp_path: Path) -> None:
    p = check(tmp_path, BASE)
    assert p.returncode == 0, p.stderr  # so each case fails for its own reason only


@pytest.mark.parametrize(("text", "why"), [
    ("realtime: [1, 2\n", "config: {cfg} is not valid YAML at line 2, column 1: "),
    ("- just\n- a list\n", "(top level): expected a mapping, got a list"),
    ("", "config: {cfg} is empty"),
    ("# only a comment\n", "config: {cfg} is empty"),
])
def test_unreadable_files_are_exit_78_without_traceback(tmp_path: Path, text: str,
                                                        why: str) -> None:
    p = check(tmp_path, text)
    assert p.returncode == 78, p.stderr
    assert "Traceback" not in p.stderr
    want = "voiced: config error: " + why.format(cfg=tmp_path / "voiced.yaml")
    assert p.stderr.splitlines()[0].startswith(want), p.stderr


def test_missing_config_file_is_exit_78(tmp_path: Path) -> None:
    p = subprocess.run(voiced_cmd("check-config", "-c", str(tmp_path / "nope.yaml")),
                       env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
                       check=False)
    assert p.returncode == 78 and "Traceback" not in p.stderr
    assert "nope.yaml" in p.stderr


def test_three_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = BASE.replace("realtime: {", "realtime: {voice: bob, bogus: 1, ").replace(
        "audio: {", "audio: {frame_ms: 7, ")
    p = check(tmp_path, text)
    assert p.returncode == 78
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("voiced: config error:")]
    assert len(errors) == 3, p.stderr
    for key in ("realtime.voice", "realtime.bogus", "audio.frame_ms"):
        assert any(f"config error: {key}: " in ln for ln in errors), (key, p.stderr)


def test_example_config_validates() -> None:
    p = subprocess.run(voiced_cmd("check-config", "-c",
                                  str(REPO / "config" / "voiced.example.yaml")),
                       env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
                       check=False)
    assert p.returncode == 0, p.stderr


def test_the_example_http_tool_validates_when_uncommented(tmp_path: Path) -> None:
    """It crashed check-config (`on:` is a YAML boolean, `{service}` was undeclared)."""
    lines = (REPO / "config" / "voiced.example.yaml").read_text().splitlines()
    start = lines.index("  http: []")
    out, i = lines[:start] + ["  http:"], start + 1
    while lines[i].startswith("  # - name:") or lines[i].startswith("  #   "):
        out.append("  " + lines[i][4:])
        i += 1
    assert len(out) - start > 10  # the whole example tool
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text("\n".join(out + lines[i:]) + "\n")
    p = subprocess.run(voiced_cmd("check-config", "-c", str(cfg)), cwd=tmp_path,
                       env=clean_env(VOICED_HA_TOKEN="ha-token-0123456789"),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0, p.stderr
    s = config.load(cfg, environ={"VOICED_HA_TOKEN": "ha-token-0123456789"})
    [tool] = s.tools.http
    assert tool.name == "lights" and tool.max_reply_bytes == 1_000_000


# ------------------------------------------------------------------ secrets

SECRET = "sk-test-SECRET123"


def test_credentials_directory_wins_over_the_environment(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai_api_key").write_text(SECRET + "\n")
    data = yaml.safe_load(BASE.replace("ws://127.0.0.1:8765",
                                              "wss://api.openai.com"))
    s = config.parse(data, environ={"CREDENTIALS_DIRECTORY": str(creds),
                                    "OPENAI_API_KEY": "sk-from-env"}, base_dir=tmp_path)
    assert s.realtime.api_key is not None and s.realtime.api_key.reveal() == SECRET
    s = config.parse(data, environ={"OPENAI_API_KEY": "sk-from-env"}, base_dir=tmp_path)
    assert s.realtime.api_key is not None and s.realtime.api_key.reveal() == "sk-from-env"


def test_a_secret_never_prints(tmp_path: Path) -> None:
    data = yaml.safe_load(BASE.replace("ws://127.0.0.1:8765",
                                              "wss://api.openai.com"))
    s = config.parse(data, environ={"OPENAI_API_KEY": SECRET}, base_dir=tmp_path)
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert SECRET not in repr(s.realtime.api_key) and SECRET not in f"{s.realtime.api_key}"
    cfg = tmp_path / "v.yaml"
    cfg.write_text(BASE.replace("ws://127.0.0.1:8765", "wss://api.openai.com")
                   + "audio_typo: 1\n")
    p = subprocess.run(voiced_cmd("check-config", "-c", str(cfg)), cwd=tmp_path,
                       env=clean_env(OPENAI_API_KEY=SECRET), capture_output=True, text=True,
                       timeout=TIMEOUT, check=False)
    assert p.returncode == 78 and SECRET not in p.stdout + p.stderr


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = config.parse(yaml.safe_load(BASE), environ={}, base_dir=tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.realtime.voice = "ash"  # type: ignore[misc]


def test_parse_raises_one_error_with_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse({"realtime": {"voice": "bob"}, "audio": {"frame_ms": 7}}, environ={},
                     base_dir=tmp_path)
    keys = [k for k, _ in e.value.problems]
    assert "realtime.voice" in keys and "audio.frame_ms" in keys


def test_check_config_names_the_resampler_or_the_package_it_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from voiced import __main__ as cli
    from voiced.audio import libsoxr
    from voiced.errors import AudioDeviceError

    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(BASE.replace("backend: file", "backend: pyaudio"))
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    assert "resampler    libsoxr-0." in capsys.readouterr().out

    def missing() -> None:
        raise AudioDeviceError("libsoxr is not installed (sudo apt install libsoxr0)")

    monkeypatch.setattr(libsoxr, "_lib", missing)
    assert cli.main(["check-config", "-c", str(cfg)]) == 0  # a 24 kHz device still works
    out = capsys.readouterr().out
    assert "resampler    MISSING: libsoxr is not installed (sudo apt install libsoxr0)" in out


# ------------------------------------------------------------------ installed credentials

OPENAI = BASE.replace("ws://127.0.0.1:8765", "wss://api.openai.com")


def installed_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """/etc/voiced/credentials as install.sh leaves it, with the key put in."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "openai_api_key").write_text(SECRET + "\n")
    (creds / "webhook_token").write_text("")  # install.sh makes every file, empty
    monkeypatch.setattr(config.secrets, "INSTALLED_CREDENTIALS_DIR", creds)
    for var in ("CREDENTIALS_DIRECTORY", "OPENAI_API_KEY", config.CONTROL_SOCKET_ENV):
        monkeypatch.delenv(var, raising=False)
    return creds


def test_check_config_reads_the_installed_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`sudo voiced check-config` has no $CREDENTIALS_DIRECTORY (systemd sets it only for
    the unit): the key is read where install.sh says to put it, and the summary says so."""
    from voiced import __main__ as cli

    creds = installed_credentials(tmp_path, monkeypatch)
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(OPENAI)
    assert cli.main(["check-config", "-c", str(cfg)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"api key      set (from {creds / 'openai_api_key'})" in out
    assert SECRET not in out
    # $CREDENTIALS_DIRECTORY (the unit) still wins; the environment is next
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    assert "api key      set (from $OPENAI_API_KEY)" in capsys.readouterr().out
    # a directory this user may not read (not root) is skipped, and the key is missing
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setattr(config.secrets, "INSTALLED_CREDENTIALS_DIR", tmp_path / "nonexistent")
    assert cli.main(["check-config", "-c", str(cfg)]) == 78
    assert "config error: credentials.openai_api_key: missing" in capsys.readouterr().err


def test_a_credential_others_may_read_or_a_symlink_is_a_warning(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai_api_key").write_text(SECRET + "\n")
    (creds / "openai_api_key").chmod(0o644)
    (tmp_path / "token").write_text("tok-0123456789\n")
    (tmp_path / "token").chmod(0o600)
    (creds / "webhook_token").symlink_to(tmp_path / "token")
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(OPENAI + "transcripts: {sink: webhook, webhook: {url: 'https://h/x'}}\n")
    p = subprocess.run(voiced_cmd("check-config", "-c", str(cfg)), cwd=tmp_path,
                       env=clean_env(CREDENTIALS_DIRECTORY=str(creds)), capture_output=True,
                       text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0, p.stderr
    warnings = p.stderr.splitlines()
    assert any(w.startswith("voiced: warning: credentials.openai_api_key: ") and
               "open to other users (mode 0644)" in w for w in warnings), p.stderr
    assert any(w.startswith("voiced: warning: credentials.webhook_token: ") and
               "symbolic link" in w for w in warnings), p.stderr
    assert SECRET not in p.stdout + p.stderr


def test_ctl_needs_no_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """`voiced ctl` reads only control.socket: a config for OpenAI with no key readable
    (a user in the voiced group) still reaches the daemon."""
    from voiced import __main__ as cli

    monkeypatch.setattr(config.secrets, "INSTALLED_CREDENTIALS_DIR", tmp_path / "nonexistent")
    for var in ("CREDENTIALS_DIRECTORY", "OPENAI_API_KEY", config.CONTROL_SOCKET_ENV):
        monkeypatch.delenv(var, raising=False)
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(OPENAI + f"control: {{socket: {tmp_path / 'none.sock'}}}\n")
    assert cli.main(["ctl", "-c", str(cfg), "status"]) == 1  # no daemon, but no exit 78
    assert "no daemon is listening on" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # everything else still needs the key
        config.load(cfg, environ={})


# ------------------------------------------------------------------ the control socket


def test_an_unusable_control_socket_is_one_line_and_exit_78(tmp_path: Path) -> None:
    """As a developer who is not root meets /run/voiced: no traceback, the key, and what
    to do (here the directory cannot be made because a file is in the way)."""
    (tmp_path / "afile").write_text("")
    cfg = tmp_path / "voiced.yaml"
    cfg.write_text(BASE + f"control: {{socket: {tmp_path / 'afile' / 'ctl.sock'}}}\n")
    p = subprocess.run(voiced_cmd("run", "-c", str(cfg)), cwd=tmp_path, env=clean_env(),
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 78, p.stderr
    assert "Traceback" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if "config error" in ln]
    assert len(errors) == 1 and errors[0].startswith(
        "voiced: config error: control.socket: cannot create "), p.stderr
    assert "VOICED_CONTROL_SOCKET" in errors[0]


def test_the_readme_commands_run_with_the_socket_moved(tmp_path: Path) -> None:
    """README "Running it": `run` and `ctl` on the example config, the socket moved by
    $VOICED_CONTROL_SOCKET as a developer who is not root does (file audio: this machine
    has no sound card)."""
    import time

    data = yaml.safe_load((REPO / "config" / "voiced.example.yaml").read_text())
    data["audio"] = {"backend": "file", "input": {"file": str(QUESTION_WAV)},
                     "output": {"file": str(tmp_path / "out.wav")}}
    example = str(tmp_path / "voiced.yaml")
    Path(example).write_text(yaml.safe_dump(data))
    sock = tmp_path / "voiced.sock"
    env = clean_env(VOICED_CONTROL_SOCKET=str(sock))
    p = subprocess.run(voiced_cmd("check-config", "-c", example), env=env,
                       capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert p.returncode == 0 and f"control      {sock} (from $VOICED_CONTROL_SOCKET)" in p.stdout
    daemon = subprocess.Popen(voiced_cmd("run", "-c", example), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not sock.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        p = subprocess.run(voiced_cmd("ctl", "-c", example, "status"), env=env,
                           capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert p.returncode == 0 and '"state": ' in p.stdout, p.stderr
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=TIMEOUT)
    assert daemon.returncode == 0 and "Traceback" not in err, err
