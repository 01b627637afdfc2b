//! The lab's machines: the BMC chassis program that starts QEMU, MACs, the manifests.

use super::{BMC_IP, HOST_IP};

pub(super) fn chassis_script() -> &'static str {
    r#"#!/bin/sh
# ipmi_sim "chassis_control" program of `groundwork lab`: power starts and stops this
# machine's QEMU (TCG) with BIOS or UEFI (OVMF) firmware; the boot device puts PXE or the disk
# first in the firmware's boot order (bootindex; both firmwares fall through to the other
# when the first does not boot). ipmi_sim calls
#   chassis.sh WORKDIR get power boot | set power 1|0 | set reset 1 | set boot pxe|default|...
W=$1 op=$2; shift 2
. "$W/vm.conf"
pid() { [ -s "$W/qemu.pid" ] && kill -0 "$(cat "$W/qemu.pid")" 2>/dev/null && cat "$W/qemu.pid"; }
on() {
  pid >/dev/null && return 0
  net=2 disk=1 order=c
  [ "$(cat "$W/bootdev" 2>/dev/null)" = pxe ] && net=1 disk=2 order=n
  fw=
  [ "${FW:-bios}" = uefi ] && fw="-bios /usr/share/ovmf/OVMF.fd"
  echo "$(date +%s.%N) power-on boot=$order firmware=${FW:-bios}" >>"$W/power.log"
  qemu-system-x86_64 -accel tcg -m "$MEM" -display none -vga none -nodefaults -monitor none \
    -chardev "file,id=s0,path=$W/serial.log,append=on" -serial chardev:s0 \
    $fw -name "$NAME" \
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
    -device "e1000,netdev=n0,mac=$MAC,romfile=/usr/lib/ipxe/qemu/efi-e1000.rom,bootindex=$net" \
    -drive "file=$W/disk.img,if=none,id=d0,format=raw" \
    -device "virtio-blk-pci,drive=d0,bootindex=$disk" \
    -daemonize -pidfile "$W/qemu.pid" >>"$W/qemu.log" 2>&1
}
off() {
  p=$(pid) || return 0
  echo "$(date +%s.%N) power-off" >>"$W/power.log"
  kill "$p"
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p"
}
echo "$(date +%T) $op $*" >>"$W/chassis.log"
case $op in
  get) for n in "$@"; do case $n in
         power) if pid >/dev/null; then echo power:1; else echo power:0; fi ;;
         boot)  echo "boot:$(cat "$W/bootdev" 2>/dev/null || echo default)" ;;
       esac; done ;;
  set) while [ $# -ge 2 ]; do n=$1 v=$2; shift 2; case $n in
         power) if [ "$v" = 1 ]; then on; else off; fi ;;
         reset) off; on ;;
         boot)  echo "$v" >"$W/bootdev" ;;
       esac; done ;;
esac
exit 0
"#
}

pub(super) fn mac(i: u8) -> String {
    format!("52:54:00:98:00:{i:02x}")
}

pub(super) fn manifests(n: u8, image: &str, checksum: &str) -> String {
    let mut y = format!(
        r#"# Written by `groundwork lab up`: the lab's datacenter, shaped like manifests/.
apiVersion: groundwork.dev/v1alpha1
kind: Datacenter
metadata: {{name: lab}}
spec:
  displayName: Groundwork lab
  availabilityZones: [{{name: az1}}]
  bootNetworks:
    - name: lab-boot
      availabilityZone: az1
      cidr: 10.98.0.0/24
      gateway: {HOST_IP}
      dhcpMode: Authoritative
      discoveryPool: {{start: 10.98.0.100, end: 10.98.0.199}}
      leaseSeconds: 3600
  powerBudgetKw: 10
---
apiVersion: groundwork.dev/v1alpha1
kind: Rack
metadata: {{name: lab-rack}}
spec: {{datacenter: lab, availabilityZone: az1, heightU: 42, powerBudgetKw: 10}}
---
apiVersion: groundwork.dev/v1alpha1
kind: Credential
metadata: {{name: lab-bmc}}
spec: {{username: admin, password: password}}
---
apiVersion: groundwork.dev/v1alpha1
kind: Profile
metadata: {{name: lab-os}}
spec:
  priority: 10
  os: {{url: "http://{HOST_IP}:8080/{image}", checksum: "{checksum}"}}
  machineConfig:
    hostname: "{{{{name}}}}.lab"
    users: [{{name: ops, sshAuthorizedKeys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGroundworkLabExampleKeyOnly ops@lab"], sudo: true}}]
    files: [{{path: /etc/motd, content: "Installed by Groundwork\n"}}]
"#
    );
    for i in 1..=n {
        y.push_str(&format!(
            r#"---
apiVersion: groundwork.dev/v1alpha1
kind: Node
metadata: {{name: lab-{i}}}
spec:
  rack: {{name: lab-rack, position: {i}}}
  bmc: {{address: {BMC_IP}, port: {}, protocol: ipmi, credentialsRef: lab-bmc}}
  bootMACs: ["{}"]
  profile: lab-os
  provisioning: Provisioned
"#,
            6230 + i as u16,
            mac(i)
        ));
    }
    y
}
