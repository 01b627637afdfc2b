#!/usr/bin/env bash
# Builds RustyVault 0.2.1 (crate `rusty_vault`, Apache-2.0: Vault's HTTP API in part) from
# crates.io into a cache directory, with the crate's own lock file. Its server `rvault` is
# the real process the secrets layer is tested against (tests/vault.rs). ~5 min on 2 cores,
# once per machine.
# Usage: tests/fetch-rustyvault.sh [CACHE]   (default /var/tmp/groundwork-rustyvault)
# Prints the binary's path.
set -euo pipefail
C=${1:-/var/tmp/groundwork-rustyvault}
bin=$C/bin/rvault
if [ -x "$bin" ] && [ -f "$C/.crates.toml" ] && grep -q 'rusty_vault 0.2.1' "$C/.crates.toml"; then
  echo "$bin"; exit 0
fi
for i in 1 2 3; do
  CARGO_TARGET_DIR=$C-build timeout 1800 cargo install rusty_vault --version 0.2.1 --locked \
    --root "$C" >&2 && break
  echo "fetch-rustyvault: cargo install failed (try $i); retrying" >&2; sleep 20
done
rm -rf "$C-build"
[ -x "$bin" ] || { echo "fetch-rustyvault: no $bin after the build" >&2; exit 1; }
echo "$bin"
