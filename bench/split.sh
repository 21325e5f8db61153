#!/usr/bin/env bash
# Echo through Switchyard and NGINX over ws and wss, in turn, with each proxy's CPU per message
# split into user and system time (from /proc/PID/stat): where a proxy spends what it spends,
# and what TLS adds to each. 100 connections, 64-byte messages; each proxy terminates TLS with
# the same ECDSA P-256 certificate. One line per target and round, then the medians.
#
# Usage: bash bench/split.sh [SECONDS] [ROUNDS]   (BASELINE=DIR: also DIR/switchyard-proxy,
# another build, as targets "baseline" and "baseline-ws", to compare a change with its
# predecessor; BLARGS="...": flags for that baseline only, e.g. BASELINE=target/release
# BLARGS=--no-park-yield to weigh a flag; PERF=1: also samples each proxy with perf in the first round and splits its CPU
# per message by where it goes: sending, receiving, epoll_wait, being preempted on the way
# back from a system call, sched_yield, the rest of the kernel, user space; SECONDS >= 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-3}
OUT=bench/out/split
rm -rf "$OUT"; mkdir -p "$OUT"
source bench/lib.sh
need nginx:nginx-light
[ -z "${PERF:-}" ] || need perf:linux-perf
cargo build --release --bins -q
B=target/release
# User and system ticks of a process and its children.
ticks() { local u=0 s=0 a b; for p in $(procs "$1"); do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }

CERTS="$PWD/$OUT/certs"
$B/switchyard certs init "$CERTS" >/dev/null
$B/switchyard certs issue "$CERTS" --role proxy --name bench --san localhost --san 127.0.0.1 >/dev/null
BACKEND=$(port); CP=$(port); SY=$(port); SYA=$(port); SYS=$(port); NG=$(port); NGS=$(port)
$B/switchyard demo-backend --listen 127.0.0.1:$BACKEND --no-greeting > "$OUT/backend.log" 2>&1 & PIDS+=($!)
$B/switchyard-control --id 1 --listen 127.0.0.1:$CP --data-dir "$OUT/cp" --metrics-listen off > "$OUT/cp.log" 2>&1 & PIDS+=($!)
wait_port $BACKEND; wait_port $CP
export SWITCHYARD_ENDPOINTS=127.0.0.1:$CP
wait_leader $B/switchyard
$B/switchyard pool create bench >/dev/null
$B/switchyard backend add bench 127.0.0.1:$BACKEND >/dev/null
$B/switchyard route set all --pool bench >/dev/null
start_proxy() { # BINARY ID WS WSS ADMIN
  "$1" --listen 127.0.0.1:$3 --admin 127.0.0.1:$5 --control-plane 127.0.0.1:$CP --proxy-id "$2" \
    --wss-listen 127.0.0.1:$4 --wss-cert "$CERTS/bench.crt" --wss-key "$CERTS/bench.key" ${@:6} > "$OUT/$2.log" 2>&1 &
}
start_proxy $B/switchyard-proxy switchyard $SY $SYS $SYA; SYPID=$!; PIDS+=($SYPID)
nginx_ws_conf "$OUT/nginx.conf" $BACKEND "listen 127.0.0.1:$NG;" "listen 127.0.0.1:$NGS ssl;" \
  "ssl_certificate $CERTS/bench.crt;" "ssl_certificate_key $CERTS/bench.key;" "ssl_protocols TLSv1.2 TLSv1.3;"
nginx -c "$PWD/$OUT/nginx.conf" > "$OUT/nginx.log" 2>&1 & NGPID=$!; PIDS+=($NGPID)
declare -A ADDR=([switchyard]=$SYS [switchyard-ws]=$SY [nginx]=$NGS [nginx-ws]=$NG)
declare -A PID=([switchyard]=$SYPID [switchyard-ws]=$SYPID [nginx]=$NGPID [nginx-ws]=$NGPID)
TARGETS="switchyard switchyard-ws nginx nginx-ws"
if [ -n "${BASELINE:-}" ]; then
  BL=$(port); BLS=$(port); BLA=$(port)
  start_proxy "$BASELINE/switchyard-proxy" baseline $BL $BLS $BLA $BLARGS; BLPID=$!; PIDS+=($BLPID)
  wait_port $BLS; wait_proxy_config 127.0.0.1:$BLA
  ADDR+=([baseline]=$BLS [baseline-ws]=$BL); PID+=([baseline]=$BLPID [baseline-ws]=$BLPID)
  TARGETS="switchyard switchyard-ws baseline baseline-ws nginx nginx-ws"
fi
wait_port $SYS; wait_port $NGS; wait_proxy_config 127.0.0.1:$SYA

RESULTS="$OUT/results.jsonl"; : > "$RESULTS"
for round in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    case $t in *-ws) tls=();; *) tls=(--tls-ca "$CERTS/ca.crt" --sni localhost);; esac
    c0=$(ticks "${PID[$t]}")
    sampler=
    if [ -n "${PERF:-}" ] && [ "$round" = 1 ]; then
      # The middle of the run: a second after the clients connected, until a second before the end.
      (sleep 1; perf record -q -e cpu-clock -g -F 2000 -p "$(procs "${PID[$t]}" | xargs | tr ' ' ,)" \
        -o "$OUT/$t.perf" -- sleep $((SECS - 2)) >/dev/null 2>&1) & sampler=$!
    fi
    line=$($B/ws-bench "${tls[@]}" throughput --target "127.0.0.1:${ADDR[$t]}" --conns 100 --seconds "$SECS" --size 64)
    [ -z "$sampler" ] || wait "$sampler"
    c1=$(ticks "${PID[$t]}")
    echo "$line" | python3 -c "
import json, sys
r = json.loads(sys.stdin.read()); a, b = '$c0'.split(), '$c1'.split(); n = 2 * r['round_trips']
us = lambda i: (int(b[i]) - int(a[i])) * 1e6 / $TCK / n
print(json.dumps({'name': '$t', 'round': $round, 'messages_per_sec': r['messages_per_sec'], 'user_us': us(0), 'sys_us': us(1)}))" \
      | tee -a "$RESULTS"
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r['name'], []).append(r)
med = lambda n, k: statistics.median(r[k] for r in by[n])
print(f"\n{'target':16}{'msgs/s':>10}{'user us':>10}{'sys us':>10}{'total us':>10}  (per message, medians)")
for n in by:
    print(f"{n:16}{med(n, 'messages_per_sec'):10.0f}{med(n, 'user_us'):10.2f}{med(n, 'sys_us'):10.2f}{med(n, 'user_us') + med(n, 'sys_us'):10.2f}")
total = lambda r: r['user_us'] + r['sys_us']
for a, b in [('switchyard', 'nginx'), ('switchyard-ws', 'nginx-ws'), ('switchyard', 'baseline')]:
    if a in by and b in by:
        cpu = [total(x) / total(y) for x, y in zip(by[a], by[b])]
        mps = [x['messages_per_sec'] / y['messages_per_sec'] for x, y in zip(by[a], by[b])]
        print(f"{a}/{b} by round: CPU per message " + ", ".join(f"{c:.2f}x" for c in cpu)
              + "; messages/s " + ", ".join(f"{m:.2f}x" for m in mps))
for p in ('switchyard', 'nginx'):
    if p in by and p + '-ws' in by:
        print(f"{p}: TLS adds {med(p, 'user_us') - med(p + '-ws', 'user_us'):.2f} us of user time per message")
PY

# Where each proxy's CPU per message goes (first round, perf): each share of its samples times
# its CPU per message in that round. "preempted" is time under `exit_to_user_mode_loop`: switched
# out on the way back from a system call, by a task woken on the same core.
[ -n "${PERF:-}" ] || exit 0
for f in "$OUT"/*.perf; do
  perf report -i "$f" --children --sort sym --stdio -g none 2>/dev/null > "${f%.perf}.syms"
  perf report -i "$f" --no-children --sort dso --stdio -g none 2>/dev/null > "${f%.perf}.dsos"
done
python3 - "$RESULTS" "$OUT" <<'PY'
import json, re, sys
rows = {r['name']: r for r in map(json.loads, open(sys.argv[1])) if r['round'] == 1}
# Each entry's share of samples, children included: a syscall's whole cost. `write` and `read`
# show as `ksys_write`/`ksys_read` on kernels that fold their `__x64_sys_` frame away.
parts = [('send', ['sendto', 'writev', 'sendmsg', ('write', 'ksys_write')]),
         ('receive', ['recvfrom', 'readv', 'recvmsg', ('read', 'ksys_read')]),
         ('epoll_wait', ['epoll_wait']), ('preempted', [('', 'exit_to_user_mode_loop')]), ('sched_yield', ['sched_yield'])]
print(f"\n{'target':16}" + "".join(f"{p:>12}" for p, _ in parts) + f"{'other kernel':>14}{'user':>8}  (us per message, first round)")
for name, r in rows.items():
    try:
        syms, dsos = open(f"{sys.argv[2]}/{name}.syms").read(), open(f"{sys.argv[2]}/{name}.dsos").read()
    except FileNotFoundError:
        continue
    total = r['user_us'] + r['sys_us']
    pct = {m.group(2): float(m.group(1)) / 100 for m in re.finditer(r'^\s*([\d.]+)%\s+[\d.]+%\s+\[k\]\s+(\S+)', syms, re.M)}
    one = lambda e: max(pct.get('__x64_sys_' + e[0], 0), pct.get(e[1], 0)) if isinstance(e, tuple) else pct.get('__x64_sys_' + e, 0)
    share = lambda entries: sum(one(e) for e in entries)
    kernel = sum(float(m.group(1)) for m in re.finditer(r'^\s*([\d.]+)%\s+\[kernel', dsos, re.M)) / 100
    got = [share(entries) for _, entries in parts]
    print(f"{name:16}" + "".join(f"{g * total:12.2f}" for g in got) + f"{(kernel - sum(got)) * total:14.2f}{(1 - kernel) * total:8.2f}")
PY
