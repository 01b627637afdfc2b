#!/bin/sh
# The Debian 12 base image the Packer templates start from: a sparse raw disk with a GPT
# (BIOS boot partition, EFI system partition, ext4 root), Debian bookworm by debootstrap
# from Debian's archive, GRUB for both firmwares, systemd-networkd (DHCP), openssh-server
# with a build key for root (seal.sh removes it), and cloud-init (NoCloud: the installer's
# seed configures the machine).
#
#   packer/base-image.sh [OUT_DIR]      (root; default /var/tmp/groundwork-images)
#
# Writes OUT_DIR/debian-12-base.raw, its .sha256 (`sha256:HEX`, what the templates'
# base_image_checksum takes) and OUT_DIR/build-key. Kept between runs: a second run with the
# same script reuses the image. Works without udev (partx) and without vfat in the host
# kernel (mtools for the ESP), as on CI machines; see docs/images.md.
set -eu
OUT=${1:-/var/tmp/groundwork-images}
IMG="$OUT/debian-12-base.raw"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SIZE=${BASE_IMAGE_SIZE:-3G}
stamp=$(sha256sum "$0" | cut -c1-16)
mkdir -p "$OUT"
if [ -f "$IMG" ] && [ "$(cat "$OUT/base.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "base-image: $IMG is current"; exit 0
fi
for t in debootstrap sfdisk mkfs.ext4 mcopy mformat mmd grub-mkimage partx losetup blkid; do
  command -v "$t" >/dev/null || { echo "base-image: $t is missing (apt-get install debootstrap fdisk e2fsprogs mtools grub-common util-linux)" >&2; exit 1; }
done
WORK=$(mktemp -d)
LOOP=
cleanup() {
  for m in dev/pts dev proc sys ""; do umount "$WORK/root/$m" 2>/dev/null || true; done
  [ -n "$LOOP" ] && { partx -d "$LOOP" 2>/dev/null || true; losetup -d "$LOOP" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT
rm -f "$IMG.new"
truncate -s "$SIZE" "$IMG.new"
sfdisk -q "$IMG.new" <<'PARTS'
label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios
size=200MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
PARTS
LOOP=$(losetup -f --show "$IMG.new")
partx -a "$LOOP"
mkfs.ext4 -q -L root "${LOOP}p3"
ROOT_UUID=$(blkid -s UUID -o value "${LOOP}p3")
mkdir -p "$WORK/root"
mount "${LOOP}p3" "$WORK/root"
debootstrap --variant=minbase \
  --include=linux-image-amd64,systemd-sysv,udev,dbus,grub-pc-bin,grub-efi-amd64-bin,grub2-common,openssh-server,iproute2,cloud-init,python3-cffi-backend,sudo,kmod,procps,less,ca-certificates,curl \
  bookworm "$WORK/root" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
  || { tail -20 "$OUT/debootstrap.log" >&2; exit 1; }
for m in dev dev/pts proc sys; do mount --bind "/$m" "$WORK/root/$m"; done
R="$WORK/root"
echo groundwork > "$R/etc/hostname"
cat > "$R/etc/fstab" <<FSTAB
UUID=$ROOT_UUID / ext4 errors=remount-ro 0 1
FSTAB
cat > "$R/etc/systemd/network/10-dhcp.network" <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
chroot "$R" systemctl enable systemd-networkd ssh >/dev/null 2>&1
chroot "$R" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
# cloud-init: NoCloud only (the installer's seed), no waiting for other data sources; no
# distribution default user (the seed names the users); the locale left alone (minbase has no
# `locales`, and cc_locale would fail on it).
cat > "$R/etc/cloud/cloud.cfg.d/90-groundwork.cfg" <<'CI'
datasource_list: [NoCloud, None]
users: []
locale: false
CI
# The build key: Packer logs in with it; seal.sh removes it.
rm -f "$OUT/build-key" "$OUT/build-key.pub"
ssh-keygen -q -t ed25519 -N '' -C groundwork-image-build -f "$OUT/build-key"
install -d -m 0700 "$R/root/.ssh"
install -m 0600 "$OUT/build-key.pub" "$R/root/.ssh/authorized_keys"
truncate -s 0 "$R/etc/machine-id"
# GRUB: serial and VGA consoles, the root by UUID (update-grub in a chroot names the loop).
cat > "$R/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
# Debian waits 30 s at a menu after a boot that did not finish (recordfail); a headless
# machine has nobody at the menu.
GRUB_RECORDFAIL_TIMEOUT=1
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
# BIOS: GRUB in the BIOS boot partition (this also makes /boot/grub for update-grub).
chroot "$R" grub-install --target=i386-pc --boot-directory=/boot "$LOOP" >"$OUT/grub.log" 2>&1 \
  || { cat "$OUT/grub.log" >&2; exit 1; }
chroot "$R" update-grub >>"$OUT/grub.log" 2>&1 || { cat "$OUT/grub.log" >&2; exit 1; }
sed -i "s#root=/dev/loop[0-9]*p3#root=UUID=$ROOT_UUID#g" "$R/boot/grub/grub.cfg"
# UEFI: BOOTX64.EFI built here and copied into the ESP with mtools (no vfat on the host).
cat > "$WORK/early.cfg" <<EARLY
search --no-floppy --fs-uuid --set=root $ROOT_UUID
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EARLY
grub-mkimage -O x86_64-efi -d "$R/usr/lib/grub/x86_64-efi" -o "$WORK/BOOTX64.EFI" -c "$WORK/early.cfg" -p /boot/grub \
  part_gpt part_msdos ext2 fat search search_fs_uuid normal configfile linux echo all_video gfxterm serial terminal
ESP_OFFSET=$(( $(sfdisk -q -l -o Start "$IMG.new" | sed -n 3p | tr -d ' ') * 512 ))
mformat -i "$IMG.new@@$ESP_OFFSET" -F -v ESP ::
mmd -i "$IMG.new@@$ESP_OFFSET" ::/EFI ::/EFI/BOOT
mcopy -i "$IMG.new@@$ESP_OFFSET" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
chroot "$R" apt-get clean
for m in dev/pts dev proc sys; do umount "$R/$m"; done
umount "$R"
partx -d "$LOOP"; losetup -d "$LOOP"; LOOP=
mv "$IMG.new" "$IMG"
echo "sha256:$(sha256sum "$IMG" | cut -d' ' -f1)" > "$IMG.sha256"
echo "$stamp" > "$OUT/base.stamp"
echo "base-image: $IMG ($(cat "$IMG.sha256"))"
