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
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
  --cov=voiced --cov-branch --cov-report=term:skip-covered "$@"
