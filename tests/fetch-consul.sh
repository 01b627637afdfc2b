#!/usr/bin/env bash
# Fetches Consul 1.8.7 (MPL-2.0) from Debian 11's archive into a cache directory, without
# touching the system's apt sources: an apt configuration of its own, `apt-get download`,
# `dpkg-deb -x`. The binary runs on Debian 12 (it needs only libc).
# Usage: tests/fetch-consul.sh [CACHE]   (default /var/tmp/groundwork-consul)
# Prints the binary's path.
set -euo pipefail
C=${1:-/var/tmp/groundwork-consul}
bin=$C/root/usr/bin/consul
if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q 'v1.8.7'; then echo "$bin"; exit 0; fi
mkdir -p "$C/apt/lists/partial" "$C/apt/cache/archives/partial" "$C/deb"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
  > "$C/apt/sources.list"
opts=(-o "Dir::Etc::SourceList=$C/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
      -o "Dir::State::Lists=$C/apt/lists" -o "Dir::Cache=$C/apt/cache" -q)
for i in 1 2 3; do
  timeout 300 apt-get "${opts[@]}" update >&2 && break
  echo "fetch-consul: apt-get update failed (try $i); retrying" >&2; sleep 20
done
rm -f "$C"/deb/consul_*.deb
(cd "$C/deb" && timeout 300 apt-get "${opts[@]}" download consul >&2)
rm -rf "$C/root"
dpkg-deb -x "$C"/deb/consul_*.deb "$C/root"
"$bin" version | head -1 >&2
echo "$bin"
