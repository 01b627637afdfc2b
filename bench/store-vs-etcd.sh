#!/usr/bin/env bash
# Write throughput/latency and watch fan-out latency of the Groundwork API server against
# etcd, in the same run, with the shared peer harness (../shared/bench/store.sh: wrk + put.lua
# for writes, watchlat.py for watch delivery). Not a test: a benchmark; read the ratios.
# Usage: bench/store-vs-etcd.sh [SHARED_BENCH_DIR]   (default ../shared/bench)
# Env passes through to store.sh (TARGETS, CONC, DURATION, REPEATS, WATCHERS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/bench}
[ -x "$SHARED/store.sh" ] || { echo "bench: $SHARED/store.sh not found; pass the shared bench dir" >&2; exit 1; }
if [ -z "${GROUNDWORK_BIN:-}" ]; then cargo build --release -q --bin groundwork; fi
BIN=${GROUNDWORK_BIN:-$PWD/target/release/groundwork}
export TARGETS=${TARGETS:-"etcd1 external"} CONC=${CONC:-"1 16 64"} DURATION=${DURATION:-8} REPEATS=${REPEATS:-1}
export WATCHERS=${WATCHERS:-"1 10 100"}
export START_CMD="$BIN server --data-dir \$DATA --listen 127.0.0.1:28080 --insecure-plain-http --controllers none"
export TARGET_PORT=28080 MODE=k8s WRITE=apply OBJ_KIND=Profile
export OBJ_COLLECTION=/apis/groundwork.dev/v1alpha1/profiles OBJ_APIVERSION=groundwork.dev/v1alpha1
source bench/lib.sh
run_store_harness "$SHARED"
