#!/usr/bin/env bash
# The embedded demo: installs what it needs, then runs `voiced demo` (no key, no
# hardware, no network: the simulator, a WAV as the mic and a WAV as the speaker).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
exec .venv/bin/voiced demo "$@"
