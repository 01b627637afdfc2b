#!/usr/bin/env bash
# Starts a 3-member Groundwork group on 127.0.0.1 for the store benchmark: member 1 (API on
# $1_PORT, default 28080) bootstraps and is the leader the load goes to; 2 and 3 join.
# Usage: bench/raft3.sh DATA_DIR [API_PORT]    (runs in the foreground until killed)
#   GW_ARGS: more `groundwork server` arguments for every member (e.g. to A/B a setting).
set -euo pipefail
DATA=$1 PORT=${2:-28080}
BIN=${GROUNDWORK_BIN:-$(dirname "$0")/../target/release/groundwork}
# On the way out: each member's last warnings and errors, into the harness's log of this target.
report() {
  kill $(jobs -p) 2>/dev/null
  for m in 1 2 3; do
    grep -E ' (WARN|ERROR) ' "$DATA/m$m.log" 2>/dev/null | grep -v -e membership_log_id -e insecure-plain-http |
      tail -20 | sed "s/^/m$m: /" >&2
  done
}
trap report EXIT
# Start from a disk with nothing left to write back: the harness runs etcd just before, and
# the writeback of its files (and of their deletion) otherwise competes with our fsyncs
# (docs/benchmarks.md, "Harness order"). etcd starts after limits.sh, whose writes are
# O_DSYNC, so both targets start with a clean disk.
sync
"$BIN" server --data-dir "$DATA/m1" --listen "127.0.0.1:$PORT" --raft-listen 127.0.0.1:28101 --controllers none --insecure-plain-http ${GW_ARGS:-} 2> "$DATA/m1.log" &
for _ in $(seq 100); do [ -e "$DATA/m1/kubeconfig" ] && break; sleep 0.1; done
"$BIN" server --data-dir "$DATA/m2" --listen 127.0.0.1:0 --raft-listen 127.0.0.1:28102 --join 127.0.0.1:28101 --controllers none --insecure-plain-http ${GW_ARGS:-} 2> "$DATA/m2.log" &
"$BIN" server --data-dir "$DATA/m3" --listen 127.0.0.1:0 --raft-listen 127.0.0.1:28103 --join 127.0.0.1:28101 --controllers none --insecure-plain-http ${GW_ARGS:-} 2> "$DATA/m3.log" &
wait
