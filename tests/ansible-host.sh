#!/usr/bin/env bash
# A fresh Debian 12 host for the Ansible role's test: the Packer base image's root file system
# (packer/base-image.sh) booted with systemd as PID 1 by systemd-nspawn, inside a network
# namespace NAME-h joined by a veth to NAME-c, where ansible-playbook and kubectl run.
#   tests/ansible-host.sh up DIR NAME     host at 10.95.0.2, controller side 10.95.0.1;
#                                         root's SSH key is DIR/id_ed25519
#   tests/ansible-host.sh down DIR NAME   stops the container (by PID) and removes it all
# Traps (see docs/images.md): nspawn needs --keep-unit and --register=no where the machine has
# no systemd/D-Bus; the veth end inside is named host0 so the image's networkd (en*, eth*)
# leaves its static address alone.
set -euo pipefail
cmd=${1:?up|down} DIR=${2:?DIR} NAME=${3:?NAME}
IMG=${GW_BASE_IMAGE:-/var/tmp/groundwork-images/debian-12-base.raw}
SSH=(-i "$DIR/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=2)

down() {
  set +e
  if [ -s "$DIR/nspawn.pid" ]; then
    p=$(cat "$DIR/nspawn.pid")
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p"   # nspawn asks the container's systemd for a clean poweroff
      for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$p" 2>/dev/null && kill -KILL "$p"
    fi
    rm -f "$DIR/nspawn.pid"
  fi
  ip netns del "$NAME-c" 2>/dev/null
  ip netns del "$NAME-h" 2>/dev/null
  rmdir "/run/systemd/nspawn/propagate/$NAME" 2>/dev/null
  for l in $(losetup -j "$IMG" -O NAME -n 2>/dev/null); do
    umount "$DIR/mnt" 2>/dev/null; partx -d "$l" 2>/dev/null; losetup -d "$l" 2>/dev/null
  done
  return 0
}

if [ "$cmd" = down ]; then down; exit 0; fi
[ "$cmd" = up ] || { echo "usage: $0 up|down DIR NAME" >&2; exit 2; }
command -v systemd-nspawn >/dev/null || { echo "systemd-nspawn missing (tests/run installs systemd-container)" >&2; exit 1; }
[ -f "$IMG" ] || { echo "$IMG missing: run packer/base-image.sh /var/tmp/groundwork-images" >&2; exit 1; }
mkdir -p "$DIR/mnt"
down
# The root file system, copied fresh: every run starts from a host nobody touched.
L=$(losetup -f --show -r "$IMG")
partx -a "$L"
mount -o ro,noload "${L}p3" "$DIR/mnt"
rm -rf "$DIR/rootfs"
cp -a "$DIR/mnt" "$DIR/rootfs"
umount "$DIR/mnt"; partx -d "$L"; losetup -d "$L"
[ -f "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C groundwork-ansible-test -f "$DIR/id_ed25519"
install -d -m 0700 "$DIR/rootfs/root/.ssh"
install -m 0600 "$DIR/id_ed25519.pub" "$DIR/rootfs/root/.ssh/authorized_keys"

ip netns add "$NAME-c"
ip netns add "$NAME-h"
ip link add "$NAME-c0" netns "$NAME-c" type veth peer name host0 netns "$NAME-h"
ip -n "$NAME-c" addr add 10.95.0.1/24 dev "$NAME-c0"
ip -n "$NAME-h" addr add 10.95.0.2/24 dev host0
for ns in "$NAME-c" "$NAME-h"; do ip -n "$ns" link set lo up; done
ip -n "$NAME-c" link set "$NAME-c0" up
ip -n "$NAME-h" link set host0 up

setsid systemd-nspawn --boot --register=no --keep-unit --directory="$DIR/rootfs" \
  --machine="$NAME" --network-namespace-path="/run/netns/$NAME-h" --console=read-only \
  </dev/null >"$DIR/nspawn.log" 2>&1 &
echo $! >"$DIR/nspawn.pid"
for _ in $(seq 300); do
  ip netns exec "$NAME-c" ssh "${SSH[@]}" root@10.95.0.2 true 2>/dev/null && exit 0
  kill -0 "$(cat "$DIR/nspawn.pid")" 2>/dev/null || { cat "$DIR/nspawn.log" >&2; exit 1; }
  sleep 0.2
done
echo "the container did not answer SSH in 60 s; its console:" >&2
tail -40 "$DIR/nspawn.log" >&2
exit 1
