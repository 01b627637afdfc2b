#!/usr/bin/env bash
# BMC polling: power status of N BMCs speaking real IPMI 2.0 (simulated, one UDP socket each
# on 127.0.0.1), Groundwork's client concurrently and sequentially vs sequential ipmitool.
# Usage: bench/bmc.sh [N] [ROUNDS]     (defaults 200 5; needs ipmitool)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ipmitool >/dev/null || { echo "bench/bmc.sh: ipmitool is required (apt-get install ipmitool)" >&2; exit 1; }
exec cargo run --release -q -p groundwork-bmc --example poll_bench -- "${1:-200}" "${2:-5}"
