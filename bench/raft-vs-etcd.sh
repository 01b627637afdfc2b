#!/usr/bin/env bash
# The replicated API server against a 3-member etcd 3.4, same run, same machine, with the
# shared peer harness (../shared/bench/store.sh: wrk + put.lua for ~1 KiB writes at CONC
# connections, watchlat.py for watch delivery to 1/10/100 watchers). Both fsync every commit.
# Groundwork: 3 members on 127.0.0.1 (bench/raft3.sh), load on the leader's API, as store.sh
# loads etcd's leader. bench/put.lua replaces the shared one: every write changes the object,
# so no write is an unchanged-object no-op (which etcd would still count as a write).
# Usage: bench/raft-vs-etcd.sh [SHARED_BENCH_DIR]   (env: CONC, DURATION, REPEATS, WATCHERS)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/bench}
[ -x "$SHARED/store.sh" ] || { echo "bench: $SHARED/store.sh not found; pass the shared bench dir" >&2; exit 1; }
if [ -z "${GROUNDWORK_BIN:-}" ]; then cargo build --release -q --bin groundwork; fi
export GROUNDWORK_BIN=${GROUNDWORK_BIN:-$PWD/target/release/groundwork}
export TARGETS=${TARGETS:-"etcd3 external"} CONC=${CONC:-"1 16 64 256"} DURATION=${DURATION:-10} REPEATS=${REPEATS:-1}
export WATCHERS=${WATCHERS:-"1 10 100"}
export START_CMD="$PWD/bench/raft3.sh \$DATA 28080"
export TARGET_PORT=28080 MODE=k8s WRITE=apply OBJ_KIND=Profile
export OBJ_COLLECTION=/apis/groundwork.dev/v1alpha1/profiles OBJ_APIVERSION=groundwork.dev/v1alpha1
source bench/lib.sh
run_store_harness "$SHARED"
