#!/usr/bin/env bash
# What the proxy does per request and per handshake, counted rather than timed: syscalls,
# context switches and libc allocations (a uprobe on malloc), for Switchyard, NGINX and, with
# BASELINE=DIR, another build's proxy (DIR/switchyard-proxy). On this shared 2-core machine a
# 5% change in CPU time is lost in the noise of the wall clock (single rounds move by a
# third); these counts repeat to within a few per cent, so a change that removes work shows.
# NGINX allocates from its own pools, so its malloc count is not comparable; its syscalls are.
#
# Usage: bash bench/counts.sh [SECONDS_PER_PHASE] [ROUNDS]   (BASELINE=DIR: also DIR's proxy)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-3}
ROUNDS=${2:-2}
OUT=bench/out/counts
rm -rf "$OUT"; mkdir -p "$OUT"
ulimit -n 20000

source bench/lib.sh
need nginx:nginx-light perf:linux-perf
cargo build --release --bins -q
B=target/release

# The malloc probe: libc's, once per boot. Without uprobes the counts lack allocations.
LIBC=$(ldd $B/switchyard-proxy | awk '/libc.so/{print $3}')
EVENTS=raw_syscalls:sys_enter,context-switches
if perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc' || perf probe -q -x "$LIBC" malloc >/dev/null 2>&1; then
  EVENTS=$EVENTS,probe_libc:malloc
else
  echo "no uprobe on malloc here: counting syscalls and context switches only" >&2
fi

TARGETS="switchyard${BASELINE:+ baseline} nginx"
# One phase: $1 http|handshakes. A fresh node, proxies and NGINX, each target in turn.
phase() {
  local kind=$1
  BACKEND=$(port); CP=$(port); SY=$(port); SYA=$(port); BL=$(port); BLA=$(port); NG=$(port)
  if [ "$kind" = http ]; then
    $B/http-bench backend --listen 127.0.0.1:$BACKEND > "$OUT/backend.log" 2>&1 & PIDS+=($!)
  else
    $B/switchyard demo-backend --listen 127.0.0.1:$BACKEND --no-greeting > "$OUT/backend.log" 2>&1 & PIDS+=($!)
  fi
  wait_port $BACKEND
  rm -rf "$OUT/cp"
  one_node_and_proxy
  declare -A ADDR=([switchyard]=127.0.0.1:$SY [nginx]=127.0.0.1:$NG)
  declare -A PID=([switchyard]=$SYPID)
  if [ -n "${BASELINE:-}" ]; then
    "$BASELINE/switchyard-proxy" --listen 127.0.0.1:$BL --admin 127.0.0.1:$BLA --control-plane 127.0.0.1:$CP \
      --proxy-id baseline > "$OUT/baseline.log" 2>&1 & PID[baseline]=$!; PIDS+=($!)
    ADDR[baseline]=127.0.0.1:$BL
  fi
  if [ "$kind" = http ]; then
    nginx_http_conf "$OUT/nginx.conf" $BACKEND $NG
  else
    nginx_ws_conf "$OUT/nginx.conf" $BACKEND "listen 127.0.0.1:$NG;"
  fi
  nginx -c "$PWD/$OUT/nginx.conf" > "$OUT/nginx.log" 2>&1 & PID[nginx]=$!; PIDS+=($!)
  wait_port $SY; wait_port $NG; wait_proxy_config 127.0.0.1:$SYA
  [ -n "${BASELINE:-}" ] && { wait_port $BL; wait_proxy_config 127.0.0.1:$BLA; }
  for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
      if [ "$kind" = http ]; then
        load=($B/http-bench load --target "${ADDR[$t]}" --conns 64 --seconds "$SECS"); key=requests
      else
        load=($B/ws-bench handshakes --target "${ADDR[$t]}" --seconds "$SECS"); key=handshakes
      fi
      # Every thread of every process of the target (NGINX's workers are its children).
      pids=$(procs "${PID[$t]}" | xargs | tr ' ' ',')
      perf stat -x, -e "$EVENTS" -p "$pids" -- "${load[@]}" > "$OUT/load.json" 2> "$OUT/stat.txt"
      python3 - "$OUT/load.json" "$OUT/stat.txt" "$t" "$kind" "$key" "$round" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
load, stat, target, kind, key, rnd = sys.argv[1:]
n = json.load(open(load))[key]
row = {"target": target, "phase": kind, "round": int(rnd), key: n}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        row[f[2].split(":")[-1] + "_per_op"] = round(float(f[0]) / n, 3) if n else None
print(json.dumps(row))
PY
    done
  done
  cleanup; PIDS=()
}
phase http
phase handshakes

python3 - "$OUT/results.jsonl" <<'PY'
import json, sys, statistics, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for r in rows: by[(r["phase"], r["target"])].append(r)
cols = ["sys_enter", "context-switches", "malloc"]
print()
print(f"{'phase':<12}{'target':<12}" + "".join(f"{c + '/op':>20}" for c in cols))
for (phase, target), rs in by.items():
    med = lambda c: statistics.median([r[c + "_per_op"] for r in rs if r.get(c + "_per_op") is not None] or [float("nan")])
    print(f"{phase:<12}{target:<12}" + "".join(f"{med(c):>20.2f}" for c in cols))
PY
