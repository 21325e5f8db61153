#!/usr/bin/env bash
# Replicated session affinity: 3 control-plane nodes, 2 proxies, 3 echo backends on loopback.
#  1. new sessions/s with affinity recorded, end to end (a WebSocket handshake through a
#     proxy, or a long-polling client's first plain HTTP GET, until the binding is committed
#     in Raft);
#  2. time from a new session's handshake until its binding is applied on every proxy;
#  3. binding reports absorbed per second, sent straight to the control plane in batches.
# Usage: bash bench/affinity.sh [SECONDS]   (B=DIR runs another build's binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
OUT=bench/out/affinity
rm -rf "$OUT"; mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
ulimit -n 20000
cargo build --release --bins -q
B=${B:-target/release}
source bench/lib.sh

C1=$(port); C2=$(port); C3=$(port)
IC="1=127.0.0.1:$C1,2=127.0.0.1:$C2,3=127.0.0.1:$C3"
i=1; for c in $C1 $C2 $C3; do
  $B/switchyard-control --id $i --listen 127.0.0.1:$c --data-dir "$OUT/cp$i" --initial-cluster "$IC" > "$OUT/cp$i.log" 2>&1 & PIDS+=($!)
  i=$((i+1))
done
wait_port $C1; wait_port $C2; wait_port $C3
export SWITCHYARD_ENDPOINTS=127.0.0.1:$C1,127.0.0.1:$C2,127.0.0.1:$C3
wait_leader $B/switchyard
$B/switchyard pool create chat --affinity header:X-Session --affinity-ttl 30m >/dev/null
BACKENDS=()
for n in 1 2 3; do
  p=$(port)
  $B/switchyard demo-backend --listen 127.0.0.1:$p --name "b$n" --no-greeting > /dev/null 2>&1 & PIDS+=($!)
  wait_port $p
  $B/switchyard backend add chat 127.0.0.1:$p >/dev/null
  BACKENDS+=("127.0.0.1:$p")
done
$B/switchyard route set all --pool chat >/dev/null
# Long-polling sessions (socket.io's first requests): plain HTTP backends, the same affinity.
$B/switchyard pool create poll --affinity header:X-Session --affinity-ttl 30m >/dev/null
for n in 1 2 3; do
  p=$(port)
  $B/http-bench backend --listen 127.0.0.1:$p > /dev/null 2>&1 & PIDS+=($!)
  wait_port $p
  $B/switchyard backend add poll 127.0.0.1:$p >/dev/null
done
$B/switchyard route set poll --host poll.example --pool poll >/dev/null
WS=(); ADM=()
for n in 1 2; do
  w=$(port); a=$(port)
  $B/switchyard-proxy --listen 127.0.0.1:$w --admin 127.0.0.1:$a --control-plane "$SWITCHYARD_ENDPOINTS" --proxy-id "p$n" > "$OUT/proxy$n.log" 2>&1 & PIDS+=($!)
  wait_port $w; wait_port $a
  WS+=("127.0.0.1:$w"); ADM+=("127.0.0.1:$a")
  wait_proxy_config "127.0.0.1:$a"
done
$B/ws-bench sessions --targets "$(IFS=,; echo "${WS[*]}")" --control-plane 127.0.0.1:$C1 --seconds "$SECS" | tee -a "$RESULTS"
$B/ws-bench sessions --targets "$(IFS=,; echo "${WS[*]}")" --control-plane 127.0.0.1:$C1 --seconds "$SECS" \
  --pool poll --http-host poll.example --concurrency 64 | tee -a "$RESULTS"
$B/ws-bench visibility --target "${WS[0]}" --proxies "$(IFS=,; echo "${ADM[*]}")" --control-plane 127.0.0.1:$C1 --sessions 500 | tee -a "$RESULTS"
$B/ws-bench reports --control-plane "$SWITCHYARD_ENDPOINTS" --backend "${BACKENDS[0]}" --seconds "$SECS" --batch "${REPORT_BATCH:-500}" --reporters "${REPORTERS:-8}" | tee -a "$RESULTS"
python3 - "$RESULTS" <<'PY'
import json, sys
for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()):
    if r['phase'] == 'sessions':
        how = 'WebSocket handshakes' if r.get('over', 'ws') == 'ws' else 'HTTP GETs (kept alive)'
        print(f"new sessions with affinity, opened by {how}: {r['handshakes_per_sec']:.0f}/s through {r['proxies']} proxies; "
              f"{r['bound']} of {r['opened']} bound, {r['bound_sessions_per_sec']:.0f} bound sessions/s end to end")
    if r['phase'] == 'visibility':
        print(f"binding visible on all {r['proxies']} proxies after the handshake: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms")
    if r['phase'] == 'reports':
        print(f"binding reports: {r['sent_per_sec']:.0f}/s sent, {r['committed_per_sec']:.0f}/s committed ({r['committed']} of {r['sent']})")
PY
