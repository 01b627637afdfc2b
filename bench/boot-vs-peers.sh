#!/usr/bin/env bash
# Boot-file serving against nginx (HTTP) and tftpd-hpa (TFTP) with the shared peer harness,
# same run, same machine: ../shared/bench/boot.sh with Groundwork's `groundwork boot` as the
# `external` target of both.
# Usage: bench/boot-vs-peers.sh      (env CONNS, DURATION, REPEATS, TFTP_N passed through)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin groundwork
BIN=$PWD/target/release/groundwork
export HTTP_TARGETS=${HTTP_TARGETS-"nginx external"} TFTP_TARGETS=${TFTP_TARGETS-"tftpd-hpa external"}
export HTTP_START_CMD="$BIN boot --root \$ROOT --http 127.0.0.1:\$HTTP_PORT --tftp 127.0.0.1:0"
export TFTP_START_CMD="$BIN boot --root \$ROOT --http 127.0.0.1:0 --tftp 127.0.0.1:\$TFTP_PORT"
exec ../shared/bench/boot.sh
