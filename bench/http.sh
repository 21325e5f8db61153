#!/usr/bin/env bash
# Plain HTTP/1.1 through the proxy against NGINX, HAProxy and a direct connection: the same
# small GET on kept-alive connections (64 by default), the same backend, interleaved in one run,
# on one machine. Reports requests/s and the proxy's CPU per request, each the median of the
# rounds and a ratio to NGINX, and each round's ratios (one round here can move by a third).
#
# Usage: bash bench/http.sh [SECONDS_PER_PHASE] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
OUT=bench/out/http
rm -rf "$OUT"; mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
ulimit -n 20000

source bench/lib.sh
need nginx:nginx-light haproxy:haproxy
cargo build --release --bins -q
B=target/release

BACKEND=$(port); CP=$(port); SY=$(port); SYA=$(port); NG=$(port); HA=$(port)
$B/http-bench backend --listen 127.0.0.1:$BACKEND > "$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port $BACKEND
one_node_and_proxy

# NGINX and HAProxy as their operators would set them up for this: two workers, kept-alive
# upstream connections, forwarding headers, no access log.
nginx_http_conf "$OUT/nginx.conf" $BACKEND $NG
nginx -c "$PWD/$OUT/nginx.conf" > "$OUT/nginx.log" 2>&1 & NGPID=$!; PIDS+=($NGPID)
cat > "$OUT/haproxy.cfg" <<HAP
global
  maxconn 9950
  nbthread 2
defaults
  mode http
  option forwardfor
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  http-reuse always
frontend fe
  bind 127.0.0.1:$HA
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND
HAP
haproxy -f "$OUT/haproxy.cfg" -db > "$OUT/haproxy.log" 2>&1 & HAPID=$!; PIDS+=($HAPID)
wait_port $SY; wait_port $NG; wait_port $HA
wait_proxy_config 127.0.0.1:$SYA

declare -A ADDR=([direct]=127.0.0.1:$BACKEND [switchyard]=127.0.0.1:$SY [nginx]=127.0.0.1:$NG [haproxy]=127.0.0.1:$HA)
declare -A PID=([direct]=0 [switchyard]=$SYPID [nginx]=$NGPID [haproxy]=$HAPID)
for round in $(seq "$ROUNDS"); do
  for t in direct switchyard nginx haproxy; do
    p=${PID[$t]}
    c0=$([ "$p" = 0 ] && echo 0 || cpu_ticks "$p")
    line=$($B/http-bench load --target "${ADDR[$t]}" --conns "$CONNS" --seconds "$SECS")
    c1=$([ "$p" = 0 ] && echo 0 || cpu_ticks "$p")
    echo "$line" | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); r.update(name='$t', round=$round, proxy_cpu_s=($c1-$c0)/$TCK)
r['proxy_cpu_us_per_request'] = r['proxy_cpu_s'] * 1e6 / r['requests'] if r['requests'] else None
print(json.dumps(r))" | tee -a "$RESULTS"
  done
done

python3 - "$RESULTS" <<'PY'
import json, sys, collections, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for r in rows: by[r['name']].append(r)
# Medians of the rounds: one round on this shared machine can move by a third.
med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else float('nan')
rps = {n: med([r['requests_per_s'] for r in rs]) for n, rs in by.items()}
cpu = {n: med([r['proxy_cpu_us_per_request'] for r in rs]) for n, rs in by.items()}
err = {n: sum(r['errors'] for r in rs) for n, rs in by.items()}
print()
print(f"medians of {len(by['nginx'])} rounds")
print(f"{'target':<12}{'requests/s':>12}{'x nginx':>9}{'cpu us/req':>12}{'x nginx':>9}{'p99 us':>9}{'errors':>8}")
for n in ['direct', 'switchyard', 'nginx', 'haproxy']:
    p99 = med([r['p99_us'] for r in by[n]])
    c = cpu[n] if n != 'direct' else float('nan')
    print(f"{n:<12}{rps[n]:>12.0f}{rps[n]/rps['nginx']:>9.2f}{c:>12.1f}{c/cpu['nginx']:>9.2f}{p99:>9.0f}{err[n]:>8}")
rounds = collections.defaultdict(dict)
for r in rows: rounds[r['round']][r['name']] = r
print("switchyard/nginx by round, requests/s and CPU per request: " + ", ".join(
    f"{rs['switchyard']['requests_per_s'] / rs['nginx']['requests_per_s']:.2f}x/"
    f"{rs['switchyard']['proxy_cpu_us_per_request'] / rs['nginx']['proxy_cpu_us_per_request']:.2f}x"
    for _, rs in sorted(rounds.items())))
PY
