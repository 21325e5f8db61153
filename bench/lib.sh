# Helpers shared by the bench scripts: free ports, waiting for a listener, and killing every
# process a script started when it exits (PIDS+=($!) after each start).
PIDS=()
# Children first: NGINX's workers outlive a killed master, and would keep holding what the
# script held (the e2e lock's descriptor among them).
cleanup() { for p in "${PIDS[@]}"; do for c in $(pgrep -P "$p"); do kill -9 "$c" 2>/dev/null || true; done; kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# Installs what a script runs when it is missing, from Debian's packages: need CMD:PACKAGE...
need() {
  local missing=()
  for p in "$@"; do command -v "${p%%:*}" >/dev/null || missing+=("${p#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (Debian)..." >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
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
# A process and its children; their CPU time in clock ticks (TCK a second).
procs() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
cpu_ticks() { local t=0; for p in $(procs "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
TCK=$(getconf CLK_TCK)
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
# The start of every NGINX config here, up to the http block's first line: two workers, room
# for 20,000 connections, pid and error log under $OUT, no access log.
nginx_head() {
  cat <<NGX
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid $PWD/$OUT/nginx.pid;
error_log $PWD/$OUT/nginx.err warn;
events { worker_connections 20000; }
http {
  access_log off;
NGX
}
# NGINX set up as its operators would to proxy WebSocket: two workers, kept-alive upstream
# connections, forwarding headers, no buffering, no access log. $1: the config file to write
# (under $OUT, where its pid and error log go too); $2: the backend's port; the rest: lines
# for the server block (its listen and TLS lines).
nginx_ws_conf() {
  local conf=$1 backend=$2; shift 2
  cat > "$conf" <<NGX
$(nginx_head)
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream be { server 127.0.0.1:$backend; keepalive 64; }
  server {
$(printf '    %s\n' "$@")
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_buffering off;
    }
  }
}
NGX
}
# NGINX set up as its operators would to proxy plain HTTP: two workers, kept-alive upstream
# connections, forwarding headers, no access log. $1: the config file to write (under $OUT);
# $2: the backend's port; $3: the port to listen on.
nginx_http_conf() {
  local conf=$1 backend=$2 listen=$3
  cat > "$conf" <<NGX
$(nginx_head)
  upstream be { server 127.0.0.1:$backend; keepalive 128; }
  server {
    listen 127.0.0.1:$listen;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
NGX
}
# One control-plane node (127.0.0.1:$CP, data in $OUT/cp) holding pool `bench` with the
# backend at 127.0.0.1:$BACKEND, routed from everywhere, and one Switchyard proxy following it
# (127.0.0.1:$SY, admin 127.0.0.1:$SYA, binaries in $B); SYPID is the proxy's pid.
one_node_and_proxy() {
  $B/switchyard-control --id 1 --listen 127.0.0.1:$CP --data-dir "$OUT/cp" --metrics-listen off > "$OUT/cp.log" 2>&1 & PIDS+=($!)
  wait_port $CP
  export SWITCHYARD_ENDPOINTS=127.0.0.1:$CP
  wait_leader $B/switchyard
  $B/switchyard pool create bench >/dev/null
  $B/switchyard backend add bench 127.0.0.1:$BACKEND >/dev/null
  $B/switchyard route set all --pool bench >/dev/null
  $B/switchyard-proxy --listen 127.0.0.1:$SY --admin 127.0.0.1:$SYA --control-plane 127.0.0.1:$CP --proxy-id bench \
    > "$OUT/proxy.log" 2>&1 & SYPID=$!; PIDS+=($SYPID)
}
