#!/usr/bin/env bash
# Runs a command several times in a row while every core is kept busy by something else:
#   scripts/under_load.sh [--runs N] [--busy N] [--] [command ...]
# The command defaults to the README's test command (CI=true ./scripts/test.sh), --runs to
# 5, --busy to one busy loop per core (nproc). Prints one line per run and a summary, and
# exits non-zero if any run failed. The suite must pass like this: a test that fails only
# because the machine is loaded is a bug in the test.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
busy=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --busy) busy=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || set -- env CI=true ./scripts/test.sh

loops=()
stop_load() {
  for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${loops[@]}" 2>/dev/null || true
}
trap stop_load EXIT
for _ in $(seq "$busy"); do
  # a plain busy loop at normal priority: it competes for the CPU like any other work
  bash -c 'while :; do :; done' &
  loops+=($!)
done
echo "under_load: $busy busy loop(s) on $(nproc) core(s); $runs run(s) of: $*"

mkdir -p .load-logs
failed=0
for i in $(seq "$runs"); do
  log=.load-logs/run$i.log
  start=$(date +%s)
  if "$@" >"$log" 2>&1; then result=passed; else result=FAILED; failed=$((failed + 1)); fi
  # every pytest run's summary line (scripts/test.sh runs two: the rest, then `alone`)
  summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|[0-9]+ passed' "$log" | paste -sd ';' - \
            || true)
  echo "run $i: $result in $(( $(date +%s) - start )) s; ${summary:-no pytest summary} ($log)"
done
echo "under_load: $((runs - failed)) of $runs run(s) passed under $(uptime | sed 's/.*load/load/')"
[ "$failed" -eq 0 ]
