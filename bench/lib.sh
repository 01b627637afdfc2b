# Shared by the bench/ scripts (sourced, not run).

# Runs the shared store harness ($1/store.sh, env from the caller) with bench/put.lua in place
# of the shared put.lua: every k8s-mode write changes the object (see bench/put.lua's header).
run_store_harness() {
  local shared=$1 h
  "$shared/limits.sh" || true
  h=$(mktemp -d /tmp/gw-store-bench.XXXXXX)
  cp -r "$shared"/. "$h"/ && cp bench/put.lua "$h/put.lua"
  trap "rm -rf '$h'" EXIT
  "$h/store.sh"
}
