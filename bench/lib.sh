# Shared by the bench/ scripts (sourced, not run).

# Runs the shared store harness ($1/store.sh, env from the caller) with bench/put.lua and
# bench/watchlat.py in place of the shared ones: every k8s-mode write changes the object, and
# k8s-mode watchers start from a list's resourceVersion (see each file's header).
run_store_harness() {
  local shared=$1 h
  "$shared/limits.sh" || true
  h=$(mktemp -d /tmp/gw-store-bench.XXXXXX)
  cp -r "$shared"/. "$h"/ && cp bench/put.lua "$h/put.lua" && cp bench/watchlat.py "$h/watchlat.py"
  trap "rm -rf '$h'" EXIT
  # CPU per write of each target, beside the harness (bench/cpu_per_write.py).
  python3 bench/cpu_per_write.py & local sampler=$!
  "$h/store.sh" || { kill "$sampler"; wait "$sampler"; return 1; }
  kill "$sampler"; wait "$sampler" || true
}
