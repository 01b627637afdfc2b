#!/usr/bin/env bash
# Builds Groundwork's boot images from Debian packages, into OUT:
#  - vmlinuz, initrd.img: the discovery/install ramdisk. Debian's linux-image-amd64 kernel
#    (downloaded, not installed) and an initramfs with busybox-static, the NIC and disk drivers
#    it needs, and the groundwork binary with its shared libraries. /init runs
#    `groundwork agent` (inventory, then install/wipe tasks from the boot server).
#  - os.img (+ os.img.sha256): the small OS image the tests install. A raw disk: syslinux's MBR,
#    one bootable FAT partition with syslinux, the same kernel and initramfs, booted with
#    groundwork.mode=node, so /init runs `groundwork node-agent` (machine config from
#    /groundwork/machine.json on that partition, heartbeats to the API). It stands in for a real
#    distribution image; any raw image with an MBR and a FAT first partition works the same way.
#  - undionly.kpxe (BIOS) and ipxe.efi (UEFI): iPXE's first stages from Debian's ipxe, for TFTP.
# Usage: bootimages/build.sh OUT [GROUNDWORK_BINARY]
#   (root; installs cpio busybox-static ipxe syslinux syslinux-common mtools dosfstools fdisk)
#        bootimages/build.sh --kernel-only
#   only downloads the kernel into the cache (tests/run does this while it installs packages,
#   so a mirror outage later in the run does not fail the boot tests).
# Reproducible inputs: package versions are printed and kept in OUT/versions.txt.
set -euo pipefail
KERNEL_ONLY=false
if [ "${1:-}" = --kernel-only ]; then
  KERNEL_ONLY=true
else
  OUT=${1:?usage: bootimages/build.sh OUT [GROUNDWORK_BINARY] | --kernel-only}
  BIN=${2:-$(cd "$(dirname "$0")/.." && pwd)/target/release/groundwork}
  [ -x "$BIN" ] || { echo "build.sh: no groundwork binary at $BIN (cargo build --release)" >&2; exit 1; }
fi
CACHE=${BOOTIMAGE_CACHE:-/var/tmp/groundwork-bootimage-cache}
MODS="e1000 virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_blk"
need() { command -v "$1" >/dev/null 2>&1 || [ -e "$1" ]; }
missing=()
need cpio || missing+=(cpio)
file /bin/busybox 2>/dev/null | grep -q 'statically linked' || missing+=(busybox-static)
need /usr/lib/ipxe/undionly.kpxe || missing+=(ipxe)
need syslinux || missing+=(syslinux)
need /usr/lib/syslinux/mbr/mbr.bin || missing+=(syslinux-common)
need mcopy || missing+=(mtools)
need mkfs.vfat || missing+=(dosfstools)
need sfdisk || missing+=(fdisk)
if [ ${#missing[@]} -gt 0 ] && ! $KERNEL_ONLY; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
fi
mkdir -p "$CACHE"
$KERNEL_ONLY || mkdir -p "$OUT"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -q; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
cached() { [ -s "$CACHE/$1/vmlinuz" ] && [ -s "$CACHE/$1/mod/virtio_blk.ko" ]; }
if ! cached "$kpkg"; then
  d=$(mktemp -d /tmp/gw-kernel.XXXXXX)
  # The mirror is a network away: a transient failure (DNS, a dropped connection) is retried
  # for about three minutes (CI once lost DNS for the whole of a shorter window). A .deb
  # apt already holds in its archive cache is used as is. If the index names a kernel the
  # mirror cannot serve, a kernel cached by an earlier build is used instead (the ramdisk
  # needs a kernel and its drivers, not the newest one).
  if ls /var/cache/apt/archives/"$kpkg"_*.deb >/dev/null 2>&1; then
    cp /var/cache/apt/archives/"$kpkg"_*.deb "$d/"
  else
    delays=(5 10 20 40 60 60)
    for attempt in 1 2 3 4 5 6 7; do
      (cd "$d" && chmod 777 . && apt-get download -q "$kpkg" >/dev/null) && break
      if [ "$attempt" = 7 ]; then
        prev=$(ls -1 "$CACHE" 2>/dev/null | sort -V | while read -r k; do cached "$k" && echo "$k"; done | tail -1)
        [ -n "$prev" ] || { echo "build.sh: cannot download $kpkg (7 attempts over ~3 min), and no kernel is cached in $CACHE" >&2; exit 1; }
        echo "build.sh: cannot download $kpkg (7 attempts); using the cached $prev" >&2
        kpkg=$prev
        rm -rf "$d"
        break
      fi
      echo "build.sh: downloading $kpkg failed (attempt $attempt of 7); retrying in ${delays[$((attempt - 1))]} s" >&2
      sleep "${delays[$((attempt - 1))]}"
    done
  fi
fi
if ! cached "$kpkg"; then
  dpkg-deb --fsys-tarfile "$d"/*.deb | tar -x -C "$d" --wildcards './boot/vmlinuz-*' \
    '*/e1000/e1000.ko' '*/drivers/virtio/virtio*.ko' '*/net/*failover.ko' '*/drivers/net/virtio_net.ko' \
    '*/drivers/block/virtio_blk.ko'
  mkdir -p "$CACHE/$kpkg/mod"
  cp "$d"/boot/vmlinuz-* "$CACHE/$kpkg/vmlinuz"
  for m in $MODS; do cp "$(find "$d" -name "$m.ko" | head -1)" "$CACHE/$kpkg/mod/"; done
  rm -rf "$d"
fi
if $KERNEL_ONLY; then echo "bootimages: kernel $kpkg cached in $CACHE"; exit 0; fi
cp "$CACHE/$kpkg/vmlinuz" "$OUT/vmlinuz"
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$OUT/"

r=$(mktemp -d /tmp/gw-initrd.XXXXXX)
trap 'rm -rf "$r"' EXIT
mkdir -p "$r"/{bin,proc,sys,dev,tmp,etc,mod}
cp /bin/busybox "$r/bin/busybox"
for a in sh mount insmod ip udhcpc sed cat poweroff reboot sleep grep seq ls hostname; do ln -s busybox "$r/bin/$a"; done
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
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
mode=$(arg groundwork.mode)
if [ "$mode" = node ]; then echo "groundwork: installed system started"; else echo "groundwork: ramdisk started"; fi
for m in $(cat /mod/order); do insmod /mod/$m.ko 2>/dev/null; done
mac=$(arg groundwork.mac)
# The NIC we booted from: the one with the MAC iPXE reported; without one (the installed
# system), the first NIC.
dev=""
for i in $(seq 1 20); do
  for n in /sys/class/net/*; do
    [ "${n##*/}" = lo ] && continue
    a=$(cat $n/address 2>/dev/null)
    if [ -n "$mac" ]; then [ "$a" = "$mac" ] && dev=${n##*/}; else [ -z "$dev" ] && dev=${n##*/}; fi
  done
  [ -n "$dev" ] && break
  [ -e /sys/class/net/eth0 ] && [ $i -gt 10 ] && dev=eth0 && break
  sleep 0.5
done
ip link set lo up; ip link set "$dev" up
udhcpc -i "$dev" -s /etc/udhcpc.sh -q -n -t 10 -T 2 >/dev/null 2>&1
echo "groundwork: $dev $(ip -4 -o addr show dev $dev | sed 's/.*inet \([^ ]*\).*/\1/')"
if [ "$mode" = node ]; then
  # Applies the machine config from the disk, then heartbeats until power-off.
  /bin/groundwork node-agent || echo "GROUNDWORK-NODE-AGENT-FAILED"
else
  # Reports inventory (prints GROUNDWORK-AGENT-DONE), then runs install/wipe tasks.
  /bin/groundwork agent --timeout 120 || echo "GROUNDWORK-AGENT-FAILED"
fi
# Stay up: the controllers power the machine off or reboot it into the next phase.
while true; do sleep 3600; done
SH
chmod +x "$r/init" "$r/etc/udhcpc.sh"
(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"

# The OS image: MBR (syslinux) + partition 1 (FAT, bootable, from 1 MiB) holding syslinux,
# the kernel and the initramfs. mtools and syslinux work on the image file: no loop device.
export MTOOLS_SKIP_CHECK=1
kb=$(( ($(stat -c %s "$OUT/vmlinuz") + $(stat -c %s "$OUT/initrd.img")) / 1024 + 4096 ))
p=$(mktemp /tmp/gw-os-part.XXXXXX); rm -f "$p"
mkfs.vfat -C -n GROUNDWORK -i 47570001 "$p" "$kb" >/dev/null
cat > "$r/syslinux.cfg" <<'CFG'
DEFAULT groundwork
PROMPT 0
TIMEOUT 0
LABEL groundwork
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0 quiet groundwork.mode=node
CFG
mcopy -i "$p" "$OUT/vmlinuz" "$OUT/initrd.img" "$r/syslinux.cfg" ::/
mmd -i "$p" ::/groundwork
syslinux --install "$p"
sectors=$(( kb * 2 ))
truncate -s 0 "$OUT/os.img.tmp"
truncate -s $(( 1048576 + kb * 1024 )) "$OUT/os.img.tmp"
printf 'label: dos\nlabel-id: 0x47570001\nstart=2048, size=%s, type=c, bootable\n' "$sectors" | sfdisk -q "$OUT/os.img.tmp"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$OUT/os.img.tmp" bs=440 count=1 conv=notrunc status=none
dd if="$p" of="$OUT/os.img.tmp" bs=1M seek=1 conv=notrunc status=none
rm -f "$p"
mv "$OUT/os.img.tmp" "$OUT/os.img"
echo "sha256:$(sha256sum "$OUT/os.img" | cut -d' ' -f1)" > "$OUT/os.img.sha256"
{ echo "kernel: $kpkg"; echo "busybox: $(dpkg-query -W -f '${Version}' busybox-static)"; echo "ipxe: $(dpkg-query -W -f '${Version}' ipxe)"; echo "syslinux: $(dpkg-query -W -f '${Version}' syslinux)"; echo "groundwork: $("$BIN" --version)"; } > "$OUT/versions.txt"
echo "bootimages: $(du -h "$OUT/vmlinuz" | cut -f1) vmlinuz, $(du -h "$OUT/initrd.img" | cut -f1) initrd.img, $(du -h --apparent-size "$OUT/os.img" | cut -f1) os.img ($(cat "$OUT/os.img.sha256")) in $OUT ($kpkg)"
