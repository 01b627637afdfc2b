#!/usr/bin/env bash
# TFTP with clients that negotiate windowsize (RFC 7440), which ../shared/bench/boot.sh's curl
# cannot: TFTP_N concurrent atftp downloads of an 8 MiB file with blksize 1468 and windowsize
# WINDOW, against tftpd-hpa (which ignores windowsize, so the transfer runs lock-step, as every
# PXE client sees it) and Groundwork, same run, same machine, REPEATS times each.
# Usage: bench/tftp-windowsize.sh        (env TFTP_N=50 WINDOW=16 REPEATS=3 SIZE_MIB=8 GROUNDWORK_BIN)
# Output: one line per target and run: wall seconds, aggregate MB/s, failures; then medians.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${TFTP_N:-50} WINDOW=${WINDOW:-16} REPEATS=${REPEATS:-3} SIZE_MIB=${SIZE_MIB:-8}
command -v atftp >/dev/null || apt-get install -y -q atftp >/dev/null
command -v in.tftpd >/dev/null || apt-get install -y -q tftpd-hpa >/dev/null
# GROUNDWORK_BIN: a prebuilt binary (default: build the release binary of this tree).
if [ -z "${GROUNDWORK_BIN:-}" ]; then cargo build --release -q --bin groundwork; fi
BIN=${GROUNDWORK_BIN:-$PWD/target/release/groundwork}
WORK=$(mktemp -d /tmp/gw-tftp-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/root" && chmod 755 "$WORK" "$WORK/root"
head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/root/f.bin" && chmod 644 "$WORK/root/f.bin"
in.tftpd -L -a 127.0.0.1:36970 -u root -s "$WORK/root" & PIDS+=($!)
"$BIN" boot --root "$WORK/root" --http 127.0.0.1:0 --tftp 127.0.0.1:36971 2>"$WORK/gw.log" & PIDS+=($!)
sleep 1
run() { # target port -> "wall agg_MBps failures"
  local d="$WORK/out-$1-$3"; mkdir -p "$d"
  local t0 t1 fails=0 pids=()
  t0=$(date +%s.%N)
  for i in $(seq 1 "$N"); do
    timeout 120 atftp --option "blksize 1468" --option "windowsize $WINDOW" --option "tsize 0" \
      -g -r f.bin -l "$d/$i" 127.0.0.1 "$2" >/dev/null 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fails=$((fails + 1)); done
  t1=$(date +%s.%N)
  for i in $(seq 1 "$N"); do [ "$(stat -c %s "$d/$i" 2>/dev/null)" = $((SIZE_MIB << 20)) ] || fails=$((fails + 1)); done
  rm -rf "$d"
  awk -v a="$t0" -v b="$t1" -v n="$N" -v s="$SIZE_MIB" -v f="$fails" \
    'BEGIN { w = b - a; printf "%.3f %.1f %d\n", w, n * s * 1048576 / w / 1e6, f }'
}
echo "# $N concurrent atftp, ${SIZE_MIB} MiB, blksize 1468, windowsize $WINDOW; $(nproc) cores"
for r in $(seq 1 "$REPEATS"); do
  for t in tftpd-hpa:36970 groundwork:36971; do
    echo "${t%%:*} run $r: $(run "${t%%:*}" "${t##*:}" "$r")" | tee -a "$WORK/all"
  done
done
for t in tftpd-hpa groundwork; do
  grep "^$t " "$WORK/all" | awk '{print $5}' | sort -n | awk -v t="$t" '{a[NR]=$1} END {printf "%s median aggregate %.1f MB/s (%s runs)\n", t, a[int((NR+1)/2)], NR}'
done
