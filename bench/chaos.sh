#!/usr/bin/env bash
# Chaos soak: the chaos suite (tests/tests/chaos.rs) for MINUTES of faults, then its table
# per fault kind: faults injected, writes acknowledged, lost, stale reads, max convergence
# time, connections dropped. Needs root (network namespaces). The seed is printed; replay a
# run with SWITCHYARD_CHAOS_SEED=N.
# Usage: bash bench/chaos.sh [MINUTES]   (PROFILE=release for optimized binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
PROFILE=${PROFILE:-dev}
OUT=bench/out/chaos
mkdir -p "$OUT"
LOG="$OUT/chaos-$(date -u +%Y%m%dT%H%M%SZ).log"
ulimit -n 20000
echo "chaos soak: $MINUTES min of faults, profile $PROFILE, log $LOG"
# The e2e lock keeps other worktrees' end-to-end runs off the CPU and the ports meanwhile.
status=0
# A new schedule per soak unless one is asked for (`cargo test` alone runs a fixed one).
export SWITCHYARD_CHAOS_SEED=${SWITCHYARD_CHAOS_SEED:-$(date +%s%N)}
SWITCHYARD_CHAOS_SECS=$((MINUTES * 60)) flock /tmp/switchyard-e2e.lock \
  cargo test --profile "$PROFILE" -p switchyard-tests --test chaos -- --nocapture >"$LOG" 2>&1 || status=$?
grep -E '^chaos: (seed|set up|[0-9]+ )' "$LOG" | sort -u || true
# The table: from its header to the `all` row.
sed -n '/^fault  /,/^all  /p' "$LOG"
if [ "$status" -ne 0 ]; then
  echo "FAILED (exit $status); violations:"
  grep -E 'VIOLATION' "$LOG" | cut -c1-400 || true
fi
exit "$status"
