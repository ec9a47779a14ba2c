#!/usr/bin/env bash
# Installs voiced as a systemd service on Raspberry Pi OS / Debian. Idempotent.
#
#   sudo ./systemd/install.sh              install (or update) and start
#   sudo ./systemd/install.sh --uninstall  remove the service and program; keep config,
#                                          credentials and the outbox
#   sudo ./systemd/install.sh --uninstall --purge   remove those too, and the user
#   ./systemd/install.sh --root DIR        install into a scratch root (tests, images):
#                                          no apt, no systemctl
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
root=""
mode=install
purge=0
start=1
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2%/}; shift 2 ;;
    --uninstall) mode=uninstall; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# absolute, as venv records it: the build path is replaced by its exact text below
if [ -n "$root" ]; then root=$(cd "$root" && pwd); fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo ./systemd/install.sh)" >&2; exit 1
fi

prefix=$root/opt/voiced
etc=$root/etc/voiced
unit=$root/etc/systemd/system/voiced.service
state=$root/var/lib/voiced
live_systemd=0
if [ -z "$root" ] && [ -d /run/systemd/system ]; then live_systemd=1; fi
say() { echo "install.sh: $*"; }

# user and group lookups go to the target root's databases
uid_of() { awk -F: -v n="$1" '$1==n {print $3}' "$root/etc/passwd"; }
gid_of() { awk -F: -v n="$1" '$1==n {print $3}' "$root/etc/group"; }
root_args=()
[ -n "$root" ] && root_args=(--root "$root")

if [ "$mode" = uninstall ]; then
  if [ "$live_systemd" = 1 ]; then
    systemctl disable --now voiced.service 2>/dev/null || true
  fi
  rm -f "$unit" "$root/usr/local/bin/voiced"
  rm -rf "$prefix"
  [ "$live_systemd" = 1 ] && systemctl daemon-reload
  if [ "$purge" = 1 ]; then
    rm -rf "$etc" "$state"
    if [ -n "$(uid_of voiced)" ]; then userdel "${root_args[@]}" voiced 2>/dev/null || true; fi
    say "removed voiced, its configuration, credentials, outbox and user"
  else
    say "removed voiced; kept $etc and $state (use --purge to remove them)"
  fi
  exit 0
fi

# 1. system packages (only on the real system)
apt_updated=0
apt_update_once() {
  # stale or missing package lists give 404s or "no installation candidate"
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
}
if [ -z "$root" ]; then
  # libsoxr0 resamples, libspeexdsp1 cancels echo, libopus0 codes for the relay link;
  # no libasound2-plugins: the service opens ALSA devices directly, and PortAudio would
  # load that whole plugin set (ffmpeg, jack, ...) into the daemon
  pkgs=(python3-venv python3-dev gcc portaudio19-dev libsoxr0 libspeexdsp1 libopus0 alsa-utils)
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # lgpio (GPIO) and spidev (APA102 rings) come from Raspberry Pi OS when it has them
  for p in python3-lgpio python3-spidev; do
    dpkg -s "$p" >/dev/null 2>&1 && continue
    # a fresh image may have no lists, and apt-cache would not know them; optional, so
    # an offline re-run goes on without. With lists, a package they lack (plain Debian
    # has neither) does not cost every re-run an update.
    if ! apt-cache show "$p" >/dev/null 2>&1 \
        && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
      apt_update_once || true
    fi
    apt-cache show "$p" >/dev/null 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" || true
  done
fi

# 2. the service user, with the device groups that exist
for g in audio gpio spi; do
  [ -n "$(gid_of "$g")" ] || groupadd "${root_args[@]}" --system "$g"
done
if [ -z "$(uid_of voiced)" ]; then
  useradd "${root_args[@]}" --system --no-create-home --home-dir /var/lib/voiced \
    --shell /usr/sbin/nologin --user-group voiced
  say "created user voiced"
fi
for g in audio gpio spi; do
  awk -F: -v g="$g" '$1==g {print $4}' "$root/etc/group" | tr , '\n' | grep -qx voiced \
    || usermod "${root_args[@]}" -a -G "$g" voiced
done
vuid=$(uid_of voiced); vgid=$(gid_of voiced)

# 3. the program: a venv (system site packages, for python3-lgpio/spidev) in /opt/voiced
install -d -m 0755 "$prefix"
if [ ! -x "$prefix/venv/bin/python" ]; then
  python3 -m venv --system-site-packages "$prefix/venv"
fi
# reinstall only when the source changed, so a second run changes nothing
src_hash=$(cd "$src" && find pyproject.toml voiced -type f -name '*.py' -o -type f -name '*.toml' \
  -o -type f -name '*.wav' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$prefix/.source-sha256" 2>/dev/null)" != "$src_hash" ]; then
  # the on-device VAD (client_vad) is optional: without a wheel for this board it
  # needs a compiler, and the daemon works without it
  "$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check "$src[vad]" \
    || { say "webrtcvad unavailable: installing without client_vad support";
         "$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check "$src"; }
  if [ -n "$root" ]; then
    # venv and pip wrote the build path ($root/opt/voiced/venv) into the scripts'
    # shebangs, activate* and pyvenv.cfg, and compiled it into the .pyc files; the image
    # runs it as /opt/voiced/venv. Symlinks (bin/python) are left alone.
    mapfile -d '' built < <(grep -rlIZF "$prefix/venv" "$prefix/venv/bin" \
                                 "$prefix/venv/pyvenv.cfg" || true)
    build_re=$(printf '%s' "$prefix/venv" | sed 's/[][\.*^$|]/\\&/g')
    [ ${#built[@]} -eq 0 ] || sed -i "s|$build_re|/opt/voiced/venv|g" "${built[@]}"
    "$prefix/venv/bin/python" -m compileall -q -f -s "$root" -p / "$prefix/venv/lib" \
      >/dev/null || say "some .pyc files name the build path (tracebacks only)"
  fi
  echo "$src_hash" > "$prefix/.source-sha256"
  say "installed voiced into $prefix/venv"
fi
# the unit's Documentation=; removed with the program
install -d -m 0755 "$prefix/docs"
for f in "$src/README.md" "$src"/docs/*.md; do  # globbed in $src, whatever the cwd
  [ -e "$f" ] || continue
  d=${f#"$src"/}
  cmp -s "$f" "$prefix/$d" || install -m 0644 "$f" "$prefix/$d"
done
install -d -m 0755 "$root/usr/local/bin"
[ "$(readlink "$root/usr/local/bin/voiced" 2>/dev/null)" = /opt/voiced/venv/bin/voiced ] \
  || ln -sfn /opt/voiced/venv/bin/voiced "$root/usr/local/bin/voiced"

# 4. configuration: never overwrite what the installer edited
install -d -m 0750 -o 0 -g "$vgid" "$etc"
if [ ! -e "$etc/voiced.yaml" ]; then
  install -m 0640 -o 0 -g "$vgid" "$src/config/voiced.example.yaml" "$etc/voiced.yaml"
  say "wrote $etc/voiced.yaml from the example: edit it"
fi
install -d -m 0700 -o 0 -g 0 "$etc/credentials"
for c in openai_api_key webhook_token supabase_key postgres_dsn; do
  # the unit loads the whole directory; an empty file means "not set"
  [ -e "$etc/credentials/$c" ] || install -m 0600 -o 0 -g 0 /dev/null "$etc/credentials/$c"
done
install -d -m 0750 -o "$vuid" -g "$vgid" "$state"

# 5. the unit
install -d -m 0755 "$(dirname "$unit")"
if ! cmp -s "$src/systemd/voiced.service" "$unit"; then
  install -m 0644 -o 0 -g 0 "$src/systemd/voiced.service" "$unit"
  say "installed $unit"
fi
if [ "$live_systemd" = 1 ]; then
  systemctl daemon-reload
  systemctl enable voiced.service >/dev/null
  [ "$start" = 1 ] && systemctl restart voiced.service
fi

cat <<EON
install.sh: done. Next:
  1. edit /etc/voiced/voiced.yaml (realtime.url, audio devices: see \`voiced devices\`)
  2. put the API key in /etc/voiced/credentials/openai_api_key (root only, mode 0600)
  3. sudo voiced check-config -c /etc/voiced/voiced.yaml   (reads the key from there)
  4. sudo systemctl restart voiced && journalctl -u voiced -f
EON
