#!/usr/bin/env bash
# How low a WebSocket relay's CPU per message can go on this machine: the Switchyard proxy and
# NGINX against `relay-floor` (bench/relay-floor/), a transparent TCP relay on io_uring that
# forwards bytes and does nothing else: no frame parsing, timers, limits or accounting, and
# completions reaped in batches (one `io_uring_enter` for many sends and receives). What it
# costs is, near enough, what the kernel's TCP path costs per message, whatever the I/O model;
# issue 10 asks for 0.80x NGINX's CPU per message, and this shows where that stands against
# the floor. Same echo backend, same load, interleaved rounds, 2 worker threads or processes
# each; ws only (the floor relay has no TLS).
#
# Handshakes too (connect, upgrade, close; the floor's acceptor accepts and connects with
# blocking calls, the least a relay's handshake can ask of the kernel), and each target's CPU
# split into user and system time: the system time is what any relay moving the same bytes
# over the same sockets pays, so NGINX's own system time against its total says how far below
# NGINX any relay can go.
#
# Usage: bash bench/relay-floor.sh [SECONDS_PER_PHASE]   (ROUNDS=N, 3 by default; RATE=N, the
# light phase's fixed rate, 5,000 messages/s by default; SIZE=N, the message size, 64 bytes
# by default)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
OUT=bench/out/relay-floor
rm -rf "$OUT"; mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
ulimit -n 20000

source bench/lib.sh
need nginx:nginx-light
cargo build --release --bins -q
cargo build --release -q --manifest-path bench/relay-floor/Cargo.toml
B=target/release

BACKEND=$(port); CP=$(port); SY=$(port); SYA=$(port); NG=$(port); FL=$(port)
$B/switchyard demo-backend --listen 127.0.0.1:$BACKEND --no-greeting > "$OUT/backend.log" 2>&1 & PIDS+=($!)
wait_port $BACKEND
one_node_and_proxy
nginx_ws_conf "$OUT/nginx.conf" $BACKEND "listen 127.0.0.1:$NG;"
nginx -c "$PWD/$OUT/nginx.conf" >> "$OUT/nginx.log" 2>&1 & NGPID=$!; PIDS+=($NGPID)
bench/relay-floor/target/release/relay-floor 127.0.0.1:$FL 127.0.0.1:$BACKEND 2 > "$OUT/floor.log" 2>&1 & FLPID=$!; PIDS+=($FLPID)
wait_port $SY; wait_port $NG; wait_port $FL
wait_proxy_config 127.0.0.1:$SYA

declare -A ADDR=([switchyard]=127.0.0.1:$SY [nginx]=127.0.0.1:$NG [floor]=127.0.0.1:$FL)
declare -A PID=([switchyard]=$SYPID [nginx]=$NGPID [floor]=$FLPID)
# User and system ticks of a process and its children.
ticks() { local u=0 s=0 a b; for p in $(procs "$1"); do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }
# One phase: ws-bench's JSON line with the relay's CPU per unit of work (an echo is two
# messages; a handshake is one), user and system apart.
phase() {
  local name=$1 t=$2 round=$3; shift 3
  local c0 c1 line
  c0=$(ticks "${PID[$t]}")
  line=$($B/ws-bench "$@" --target "${ADDR[$t]}" --seconds "$SECS")
  c1=$(ticks "${PID[$t]}")
  echo "$line" | python3 -c "
import json,sys; r=json.loads(sys.stdin.read()); r.update(phase='$name', name='$t', round=$round)
(u0, s0), (u1, s1) = [int(x) for x in '$c0'.split()], [int(x) for x in '$c1'.split()]
n = 2 * r['round_trips'] if 'round_trips' in r else r['handshakes']
r['user_us'], r['sys_us'] = ((u1 - u0) * 1e6 / $TCK / n, (s1 - s0) * 1e6 / $TCK / n) if n else (None, None)
r['cpu_us'] = r['user_us'] + r['sys_us'] if n else None
print(json.dumps(r))" >> "$RESULTS"
}
for round in $(seq "${ROUNDS:-3}"); do
  for t in switchyard nginx floor; do
    phase throughput "$t" "$round" throughput --conns 100 --size "${SIZE:-64}"
    phase light "$t" "$round" throughput --conns 50 --size "${SIZE:-64}" --rate "${RATE:-5000}"
    phase handshakes "$t" "$round" handshakes
  done
  echo "round $round done" >&2
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(phase, name, key):
    v = [r[key] for r in rows if r["phase"] == phase and r["name"] == name and r.get(key) is not None]
    return statistics.median(v) if v else float("nan")
print(f"{'figure':<36}{'switchyard':>12}{'nginx':>12}{'floor':>12}{'sy/nginx':>10}{'floor/nginx':>13}")
for phase, key, label in [("throughput", "messages_per_sec", "messages/s"),
                          ("throughput", "cpu_us", "CPU per message (us)"),
                          ("throughput", "sys_us", "  of which system time"),
                          ("light", "cpu_us", "CPU per message at a light rate"),
                          ("light", "sys_us", "  of which system time"),
                          ("handshakes", "per_sec", "handshakes/s"),
                          ("handshakes", "cpu_us", "CPU per handshake (us)"),
                          ("handshakes", "sys_us", "  of which system time")]:
    s, n, f = (med(phase, x, key) for x in ("switchyard", "nginx", "floor"))
    print(f"{label:<36}{s:>12.2f}{n:>12.2f}{f:>12.2f}{s / n:>9.2f}x{f / n:>12.2f}x")
for phase, what in [("throughput", "message"), ("light", "message at a light rate"), ("handshakes", "handshake")]:
    share = med(phase, "nginx", "sys_us") / med(phase, "nginx", "cpu_us")
    print(f"NGINX's system time alone per {what}: {share:.2f}x its CPU")
PY
