#!/usr/bin/env bash
# Builds the discovery/install ramdisk from Debian packages: OUT/vmlinuz (Debian's
# linux-image-amd64 kernel, downloaded, not installed) and OUT/initrd.img (busybox-static,
# the NIC drivers it needs, and the groundwork binary with its shared libraries, which runs
# `groundwork agent`). Also copies iPXE's first stages (Debian package ipxe) to OUT:
# undionly.kpxe (BIOS) and ipxe.efi (UEFI), for TFTP.
# Usage: bootimages/build.sh OUT [GROUNDWORK_BINARY]   (root; installs cpio busybox-static ipxe)
# Reproducible inputs: the kernel package version is printed and kept in OUT/versions.txt.
set -euo pipefail
OUT=${1:?usage: bootimages/build.sh OUT [GROUNDWORK_BINARY]}
BIN=${2:-$(cd "$(dirname "$0")/.." && pwd)/target/release/groundwork}
[ -x "$BIN" ] || { echo "build.sh: no groundwork binary at $BIN (cargo build --release)" >&2; exit 1; }
CACHE=${BOOTIMAGE_CACHE:-/var/tmp/groundwork-bootimage-cache}
MODS="e1000 virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net"
need() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; }
missing=()
need cpio || missing+=(cpio)
file /bin/busybox 2>/dev/null | grep -q 'statically linked' || missing+=(busybox-static)
need /usr/lib/ipxe/undionly.kpxe || missing+=(ipxe)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
mkdir -p "$OUT" "$CACHE"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -q; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
if [ ! -s "$CACHE/$kpkg/vmlinuz" ]; then
  d=$(mktemp -d /tmp/gw-kernel.XXXXXX)
  (cd "$d" && chmod 777 . && apt-get download -q "$kpkg" >/dev/null)
  dpkg-deb --fsys-tarfile "$d"/*.deb | tar -x -C "$d" --wildcards './boot/vmlinuz-*' \
    '*/e1000/e1000.ko' '*/drivers/virtio/virtio*.ko' '*/net/*failover.ko' '*/drivers/net/virtio_net.ko'
  mkdir -p "$CACHE/$kpkg/mod"
  cp "$d"/boot/vmlinuz-* "$CACHE/$kpkg/vmlinuz"
  for m in $MODS; do cp "$(find "$d" -name "$m.ko" | head -1)" "$CACHE/$kpkg/mod/"; done
  rm -rf "$d"
fi
cp "$CACHE/$kpkg/vmlinuz" "$OUT/vmlinuz"
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$OUT/"

r=$(mktemp -d /tmp/gw-initrd.XXXXXX)
trap 'rm -rf "$r"' EXIT
mkdir -p "$r"/{bin,proc,sys,dev,tmp,etc,mod}
cp /bin/busybox "$r/bin/busybox"
for a in sh mount insmod ip udhcpc sed cat poweroff sleep grep seq ls; do ln -s busybox "$r/bin/$a"; done
cp "$CACHE/$kpkg"/mod/*.ko "$r/mod/"
echo "$MODS" > "$r/mod/order"
# The agent and the shared libraries it links (glibc, libgcc_s), at the paths the dynamic
# linker expects.
cp "$BIN" "$r/bin/groundwork"
command -v strip >/dev/null && strip "$r/bin/groundwork"
for lib in $(ldd "$BIN" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
  mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
done
cat > "$r/etc/udhcpc.sh" <<'SH'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface" 2>/dev/null
    ;;
esac
exit 0
SH
cat > "$r/init" <<'SH'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "groundwork: ramdisk started"
for m in $(cat /mod/order); do insmod /mod/$m.ko 2>/dev/null; done
mac=$(sed -n 's/.*groundwork.mac=\([^ ]*\).*/\1/p' /proc/cmdline)
# The NIC we booted from: the one with the MAC iPXE reported, else the first one.
dev=""
for i in $(seq 1 20); do
  for n in /sys/class/net/*; do
    [ "$(cat $n/address 2>/dev/null)" = "$mac" ] && dev=${n##*/}
  done
  [ -n "$dev" ] && break
  [ -e /sys/class/net/eth0 ] && [ $i -gt 10 ] && dev=eth0 && break
  sleep 0.5
done
ip link set lo up; ip link set "$dev" up
udhcpc -i "$dev" -s /etc/udhcpc.sh -q -n -t 10 -T 2 >/dev/null 2>&1
echo "groundwork: $dev $(ip -4 -o addr show dev $dev | sed 's/.*inet \([^ ]*\).*/\1/')"
if node=$(/bin/groundwork agent --timeout 120); then
  echo "GROUNDWORK-AGENT-DONE node=$node"
else
  echo "GROUNDWORK-AGENT-FAILED"
fi
# Stay up: the controllers power the machine off or reboot it into the next phase.
while true; do sleep 3600; done
SH
chmod +x "$r/init" "$r/etc/udhcpc.sh"
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
{ echo "kernel: $kpkg"; echo "busybox: $(dpkg-query -W -f '${Version}' busybox-static)"; echo "ipxe: $(dpkg-query -W -f '${Version}' ipxe)"; echo "groundwork: $("$BIN" --version)"; } > "$OUT/versions.txt"
echo "bootimages: $(du -h "$OUT/vmlinuz" | cut -f1) vmlinuz, $(du -h "$OUT/initrd.img" | cut -f1) initrd.img in $OUT ($kpkg)"
