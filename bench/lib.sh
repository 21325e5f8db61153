# Helpers shared by the bench scripts: free ports, waiting for a listener, and killing every
# process a script started when it exits (PIDS+=($!) after each start).
PIDS=()
# Children first: NGINX's workers outlive a killed master, and would keep holding what the
# script held (the e2e lock's descriptor among them).
cleanup() { for p in "${PIDS[@]}"; do for c in $(pgrep -P "$p"); do kill -9 "$c" 2>/dev/null || true; done; kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
# Waits until the Switchyard proxy with this admin address runs a config from the control plane.
wait_proxy_config() {
  python3 - "$1" <<'PY'
import json, sys, time, urllib.request
deadline = time.time() + 30
while time.time() < deadline:
    try:
        s = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/status", timeout=1))
        if s["config"]["revision"] > 0 and s["control_plane"]["connected"]:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(f"proxy {sys.argv[1]} got no config within 30 s")
PY
}
# Open descriptors of a process and its children.
fd_count() { local t=0; for p in $1 $(pgrep -P "$1"); do t=$((t + $(ls /proc/$p/fd | wc -l))); done; echo $t; }
# Waits until the Switchyard cluster at $SWITCHYARD_ENDPOINTS has a leader.
wait_leader() { for _ in $(seq 150); do "$1" -o json cluster status 2>/dev/null | grep -q '"leader_id": [1-9]' && return 0; sleep 0.2; done; echo "no leader elected" >&2; exit 1; }
# The admin address a proxy started with `--admin 127.0.0.1:0` reports on its first line.
proxy_admin() {
  for _ in $(seq 100); do
    a=$(grep -o 'admin=[0-9.:]*' "$1" 2>/dev/null | head -1 | cut -d= -f2)
    [ -n "$a" ] && { echo "$a"; return 0; }
    sleep 0.1
  done
  echo "no admin address in $1" >&2; exit 1
}
