#!/usr/bin/env bash
# Controller convergence at scale: N Nodes in N/40 racks, 3 Profiles, applied at once to a
# release server running every controller; measures how long until every Node has its
# placement condition and profile, every Rack its elevation, and the Datacenter its totals, plus
# the server's peak memory and what the controllers did (from /metrics).
# Usage: bench/controllers.sh [NODES]   (default 1000; MAX_SECONDS bounds the wait, default 300)
# No peer runs this workload (Metal3/Tinkerbell need Kubernetes), so the figures stand alone.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
MAX=${MAX_SECONDS:-300}
cargo build --release --bin groundwork -q
BIN=$PWD/target/release/groundwork
WORK=$(mktemp -d)
"$BIN" server --data-dir "$WORK" --listen 127.0.0.1:0 --insecure-plain-http 2>"$WORK/server.log" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 100); do [ -f "$WORK/kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG=$WORK/kubeconfig
URL=$(awk '/server:/{print $2}' "$KUBECONFIG")

python3 - "$N" > "$WORK/dc.yaml" <<'PY'
import sys
n = int(sys.argv[1]); racks = (n + 39) // 40
print("""apiVersion: groundwork.dev/v1alpha1
kind: Datacenter
metadata: {name: dc1}
spec: {availabilityZones: [{name: az1}, {name: az2}], powerBudgetKw: 100000}""")
for r in range(racks):
    print(f"""---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {{name: rack-{r}}}
spec: {{datacenter: dc1, availabilityZone: az{r % 2 + 1}, heightU: 42, powerBudgetKw: 20}}""")
for p, prio, roles in [("worker", 10, "[worker]"), ("db", 20, "[db]"), ("any", 0, "[worker, db, edge]")]:
    print(f"""---
apiVersion: groundwork.dev/v1alpha1
kind: Profile
metadata: {{name: {p}}}
spec:
  priority: {prio}
  selector: {{matchExpressions: [{{key: role, operator: In, values: {roles}}}]}}""")
for i in range(n):
    role = ["worker", "db", "edge"][i % 3]
    print(f"""---
apiVersion: groundwork.dev/v1alpha1
kind: Node
metadata: {{name: node-{i}, labels: {{role: {role}}}}}
spec: {{rack: {{name: rack-{i // 40}, position: {i % 40 + 1}}}, powerDrawKw: 0.4}}""")
PY

t0=$(date +%s.%N)
"$BIN" apply -f "$WORK/dc.yaml" > /dev/null
t1=$(date +%s.%N)
converged() {
  curl -sf "$URL/apis/groundwork.dev/v1alpha1/nodes" | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
ok = sum(1 for n in items if (n.get("status") or {}).get("profile") and any(
    c["type"] == "RackPlacement" and c["status"] == "True" for c in (n.get("status") or {}).get("conditions", [])))
print(ok)'
}
deadline=$(( $(date +%s) + MAX ))
while :; do
  ok=$(converged)
  [ "$ok" = "$N" ] && dcn=$(curl -sf "$URL/apis/groundwork.dev/v1alpha1/datacenters/dc1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",{}).get("nodes"))') && [ "$dcn" = "$N" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { echo "not converged after ${MAX}s: $ok/$N nodes" >&2; exit 1; }
  sleep 0.2
done
t2=$(date +%s.%N)
rss=$(awk '/VmHWM/{print $2/1024 " MiB"}' /proc/$PID/status)
echo "nodes=$N racks=$(( (N + 39) / 40 )) profiles=3"
printf 'apply (all objects):         %.2f s\n' "$(echo "$t1 - $t0" | bc)"
printf 'converged after apply:       %.2f s\n' "$(echo "$t2 - $t1" | bc)"
echo "server peak RSS:             $rss"
curl -sf "$URL/metrics" | grep -E '^groundwork_controller_reconciles_total|^groundwork_api_requests_total\{verb="patch"' | sort
