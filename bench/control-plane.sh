#!/usr/bin/env bash
# Control plane vs etcd, same machine, same load shape, one run.
#
# Both run as 3 members on loopback with durable (fsynced) logs and default settings. Load:
# new keys with ~100-byte values (etcd: Put; Switchyard: Admin.AddBackend with a 100-byte
# label), each client its own connection, clients spread over the 3 members; then leader
# failover trials under steady writes through all endpoints, every acknowledged write read
# back after each trial. Failover time: from the kill to the first write acknowledged by the
# new leader (an ack more than 10 ms after the kill, or one for a write issued after it);
# writers give up on a request after 1 s and retry on the next endpoint.
# etcd's failover is measured twice: with its own timing (heartbeat 100 ms, election 1 s) and
# with Switchyard's (ETCD_TIMING=HEARTBEAT_MS,ELECTION_MS, default 50,250).
#
# Usage: bash bench/control-plane.sh [SECONDS_PER_PHASE] [TRIALS]   (ROUNDS=N: N interleaved rounds
# of the put phases, 3 by default, each system on a fresh cluster every round; each figure is
# the median of its rounds, and the ratio of each round is printed beside it: one pair of
# 10-second phases moves by a fifth from run to run on this shared machine)
# BASELINE=DIR (a directory with another build's switchyard-control) adds that build as a third
# system, interleaved with the others, so a change is measured against its predecessor in the
# same run.
# TLS=1 runs both systems with mTLS between members and to the clients (Switchyard's default,
# etcd with --client-cert-auth and --peer-client-cert-auth), certificates from `switchyard
# certs`; a BASELINE build must then know the --tls-* flags too.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_PHASE=${1:-10}
TRIALS=${2:-10}
OUT=bench/out
mkdir -p "$OUT"

if ! command -v etcd >/dev/null; then
  echo "installing etcd-server (Debian)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
echo "etcd: $(etcd --version | head -1)" >&2

cargo build --release --bins -q
RESULTS="$OUT/control-plane.jsonl"
: > "$RESULTS"
# Interleave: put phases of both, then failover trials of both.
SYSTEMS="switchyard etcd${BASELINE:+ baseline}"
TLS_FLAG=${TLS:+--tls}
run() {
  case "$1" in
    baseline) shift; ./target/release/cp-bench --system switchyard --label switchyard-baseline --bin-dir "$BASELINE" $TLS_FLAG "$@" ;;
    etcd-timed) shift; ./target/release/cp-bench --system etcd --label etcd-timed --etcd-timing "$ETCD_TIMING" $TLS_FLAG "$@" ;;
    *) local s=$1; shift; ./target/release/cp-bench --system "$s" $TLS_FLAG "$@" ;;
  esac
}
for round in $(seq "${ROUNDS:-3}"); do
  for sys in $SYSTEMS; do
    run "$sys" --seconds "$SECONDS_PER_PHASE" --trials 0 --out-dir "$OUT" | sed "s/^{/{\"round\":$round,/" | tee -a "$RESULTS"
  done
done
# etcd again with Switchyard's election timing (heartbeat 50 ms, election timeout up to
# 240 ms; etcd wants at least 5 heartbeats), for failover only.
export ETCD_TIMING=${ETCD_TIMING:-50,250}
for sys in $SYSTEMS etcd-timed; do
  run "$sys" --skip-put --trials "$TRIALS" --out-dir "$OUT" | tee -a "$RESULTS"
done

python3 - "$RESULTS" <<'PY'
import json, os, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Each put figure is the median over the rounds (keys as cp-bench writes them).
by = {}
for r in rows:
    if r["phase"] == "put":
        by.setdefault((r["system"], r["clients"]), []).append(r)
put = {k: {f: statistics.median(x[f] for x in v) for f in ("ops_per_sec", "p50_ms", "p99_ms", "cpu_us_per_op", "client_cpu_us_per_op")}
       for k, v in by.items()}
def rounds(system, clients):
    return {r.get("round", 1): r["ops_per_sec"] for r in by.get((system, clients), [])}
fo = {r["system"]: r for r in rows if r["phase"] == "failover-summary"}
print()
print(f"{'load':<22}{'switchyard':>30}{'etcd':>30}{'ratio':>8}")
for c in sorted({k[1] for k in put}):
    s, e = put.get(("switchyard", c)), put.get(("etcd", c))
    if not s or not e:
        continue
    fmt = lambda r: f"{r['ops_per_sec']:.0f}/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f}"
    print(f"{'puts, %d client(s)' % c:<22}{fmt(s):>30}{fmt(e):>30}{s['ops_per_sec'] / e['ops_per_sec']:>7.2f}x")
    rs, re_ = rounds("switchyard", c), rounds("etcd", c)
    each = ", ".join(f"{rs[k] / re_[k]:.2f}x" for k in sorted(rs) if k in re_)
    print(f"{'  each round':<22}{each:>60}")
    el = lambda sy: sum(r.get("elections", 0) for r in by.get((sy, c), []))
    print(f"{'  elections meanwhile':<22}{el('switchyard'):>30}{el('etcd'):>30}")
    cpu = lambda r: f"{r['cpu_us_per_op']:.0f} us"
    print(f"{'  CPU per put, members':<22}{cpu(s):>30}{cpu(e):>30}{s['cpu_us_per_op'] / e['cpu_us_per_op']:>7.2f}x")
    ccpu = lambda r: f"{r['client_cpu_us_per_op']:.0f} us"
    print(f"{'  ... the load generator':<22}{ccpu(s):>30}{ccpu(e):>30}{s['client_cpu_us_per_op'] / e['client_cpu_us_per_op']:>7.2f}x")
    b = put.get(("switchyard-baseline", c))
    if b:
        print(f"{'  baseline build':<22}{fmt(b):>30}{'':>30}{s['ops_per_sec'] / b['ops_per_sec']:>7.2f}x (this/baseline)")
        print(f"{'  its CPU per put':<22}{cpu(b):>30}{'':>30}{s['cpu_us_per_op'] / b['cpu_us_per_op']:>7.2f}x (this/baseline)")
if "switchyard-baseline" in fo and "switchyard" in fo:
    s, b = fo["switchyard"], fo["switchyard-baseline"]
    print(f"{'failover, baseline':<22}{'p50 %.0f max %.0f ms' % (b['p50_ms'], b['max_ms']):>30}{'':>30}{s['p50_ms'] / b['p50_ms']:>7.2f}x (this/baseline)")
if "switchyard" in fo and "etcd" in fo:
    s, e = fo["switchyard"], fo["etcd"]
    f = lambda r: f"p50 {r['p50_ms']:.0f} max {r['max_ms']:.0f} ms"
    print(f"{'failover (%d trials)' % s['trials']:<22}{f(s):>30}{f(e):>30}{s['p50_ms'] / e['p50_ms']:>7.2f}x")
    t = fo.get("etcd-timed")
    if t:
        timing = os.environ.get("ETCD_TIMING", "50,250").replace(",", "/")
        print(f"{'  etcd at %s ms' % timing:<22}{'':>30}{f(t):>30}{s['p50_ms'] / t['p50_ms']:>7.2f}x")
    print(f"{'acknowledged lost':<22}{s['lost']:>30}{e['lost']:>30}")
PY
