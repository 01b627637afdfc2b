#!/usr/bin/env bash
# DHCP throughput against Kea (and dnsmasq) with the shared peer harness, same run, same
# machine: ../shared/bench/dhcp.sh with Groundwork as the `external` target.
# Usage: bench/dhcp-vs-kea.sh      (env RATES, DURATION, REPEATS, TARGETS passed through)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin groundwork
BIN=$PWD/target/release/groundwork
export TARGETS=${TARGETS:-"kea external"}
export SERVER_CMD="$BIN dhcp --interface \$IFACE --server-ip \$SERVER_IP --subnet \$SUBNET --pool-start \$POOL_START --pool-end \$POOL_END --lease-seconds 3600 --lease-dir \$LEASE_DIR \$( [ \"\$PERSIST\" = false ] && echo --no-persist )"
exec ../shared/bench/dhcp.sh
