#!/usr/bin/env bash
# Checks what can be checked without a cluster or a container engine:
#   - every Kubernetes manifest parses as YAML and has the parts this layout relies on,
#   - the Grafana dashboard parses as JSON,
#   - the systemd units pass `systemd-analyze verify` with no complaint at all.
# Installs what it uses (python3-yaml, systemd) when missing. Run from anywhere:
#   deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need python3 python3
python3 -c 'import yaml' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-yaml >/dev/null; }
need systemd-analyze systemd

echo "== Kubernetes manifests and the Grafana dashboard"
python3 - <<'PY'
import glob, json, sys, yaml
docs = []
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if d is None:
            continue
        for k in ("apiVersion", "kind", "metadata"):
            assert k in d, f"{f}: a document without {k}"
        assert d["metadata"].get("name"), f"{f}: a {d['kind']} without a name"
        docs.append((f, d))
kinds = {}
for f, d in docs:
    kinds.setdefault(d["kind"], []).append(d)
sts = kinds["StatefulSet"][0]
assert sts["spec"]["replicas"] == 3, "a 3-node StatefulSet"
svc = {s["metadata"]["name"]: s for s in kinds["Service"]}
assert svc[sts["spec"]["serviceName"]]["spec"].get("clusterIP") == "None", "its Service is headless"
pdbs = {p["metadata"]["name"] for p in kinds["PodDisruptionBudget"]}
assert "switchyard-control" in pdbs and "switchyard-proxy" in pdbs, "PDBs for both"
node = sts["spec"]["template"]["spec"]["containers"][0]
assert "grpc_health_probe" in " ".join(node["readinessProbe"]["exec"]["command"]), "nodes probed on grpc.health.v1"
dep = kinds["Deployment"][0]
proxy = dep["spec"]["template"]["spec"]["containers"][0]
assert proxy["readinessProbe"]["httpGet"]["path"] == "/readyz", "proxy readiness on /readyz (a config to run)"
assert proxy["livenessProbe"]["httpGet"]["path"] == "/healthz", "proxy liveness on /healthz"
pod = dep["spec"]["template"]["spec"]
assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsGroup"], "proxy can read its Secret"
# Every selector matches its pod template's labels.
for f, d in docs:
    if d["kind"] in ("StatefulSet", "Deployment"):
        sel = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in sel.items()), f"{f}: selector does not match the pod labels"
json.load(open("deploy/grafana/switchyard.json"))
print(f"ok: {len(docs)} documents ({', '.join(sorted(kinds))}), dashboard JSON")
PY

echo "== systemd units"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
# verify wants the ExecStart binaries to exist; stand-ins do, the units are verified as written.
for b in switchyard-control switchyard-proxy; do printf '#!/bin/sh\n' > "$root/usr/local/bin/$b"; chmod +x "$root/usr/local/bin/$b"; done
cp /bin/kill "$root/bin/kill"
cp deploy/systemd/*.service "$root/etc/systemd/system/"
out=$(systemd-analyze verify --root="$root" switchyard-control.service switchyard-proxy.service 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze verify complained"; exit 1; fi
echo "ok: systemd-analyze verify (systemd $(systemd-analyze --version | head -1 | awk '{print $2}'))"
