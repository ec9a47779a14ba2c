#!/usr/bin/env bash
# Installs what voiced needs on Debian / Raspberry Pi OS, idempotently:
#   scripts/setup.sh [runtime|test]
# runtime: PortAudio headers, libsoxr, libspeexdsp (echo canceller), libopus, espeak-ng, a venv
#          in .venv with voiced and its simulator.
# test:    the above plus sox, PulseAudio/ALSA plugins, PostgreSQL and libpq (psycopg
#          uses the system's: psycopg[binary] has no armv7l wheel), systemd-analyze,
#          Chromium and a font (the browser client's tests drive the distribution's
#          Chromium through Playwright), and the test tools. Safe to run again: it only
#          installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-runtime}

apt_pkgs=(portaudio19-dev libsoxr0 libspeexdsp1 libopus0 espeak-ng python3-venv python3-dev gcc)
if [ "$profile" = test ]; then
  apt_pkgs+=(sox libsox-fmt-all alsa-utils libasound2-plugins pulseaudio pulseaudio-utils
             postgresql libpq5 systemd sysbench chromium fonts-dejavu-core)
  # 32-bit ARM: a test dependency without a wheel there is built from source, in C++ too
  case "$(uname -m)" in arm*) apt_pkgs+=(g++) ;; esac
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$py" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
fi
extras="sim"
[ "$profile" = test ] && extras="sim,test"
# pocketsphinx has no wheel on some boards; the simulator works without it
if ! .venv/bin/uv pip install -q --python .venv/bin/python -e ".[$extras]"; then
  echo "setup: installing without the optional speech recogniser"
  extras=${extras/sim/}; extras=${extras#,}
  .venv/bin/uv pip install -q --python .venv/bin/python -e ".${extras:+[$extras]}"
fi
