#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types and tests.
# CI runs exactly this (.ci/run). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
echo "== ruff"; .venv/bin/ruff check voiced tests bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
  --cov=voiced --cov-branch --cov-report=term:skip-covered "$@"
