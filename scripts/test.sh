#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types and tests.
# CI runs exactly this (.ci/run). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
echo "== ruff"; .venv/bin/ruff check voiced tests bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
# coverage of this process and of every child (the daemon, PortAudio scripts, voiced ctl),
# combined; below pyproject's [tool.coverage.report] fail_under the run fails
rm -f .coverage .coverage.*
# the suite starts hundreds of interpreters (the daemon, voiced ctl, PortAudio scripts):
# with bytecode caching off (a machine's PYTHONDONTWRITEBYTECODE) each compiled voiced
# and its libraries from source again
unset PYTHONDONTWRITEBYTECODE
# four workers (pytest-xdist) on two cores: about half the suite's wall time is waiting
# (real devices, sockets, child processes), not computing. worksteal moves queued tests
# from a busy worker to an idle one, so the longest tests do not finish alone at the end.
# Each worker has its own basetemp subdirectory, PulseAudio servers, PostgreSQL and ports.
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
  -n 4 --dist worksteal --tb=short \
  --cov=voiced --cov-branch --cov-report=term:skip-covered "$@"
