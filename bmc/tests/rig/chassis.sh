#!/bin/sh
# ipmi_sim "chassis_control" program for the tests: power drives a real QEMU machine (TCG, no
# disk, no NIC: it powers on, runs its firmware and waits). ipmi_sim calls
#   chassis.sh WORKDIR get power boot     -> "power:0|1", "boot:NAME"
#   chassis.sh WORKDIR set power 1|0 | reset 1 | boot pxe|default|...
W=$1 op=$2; shift 2
pid() { [ -s "$W/qemu.pid" ] && kill -0 "$(cat "$W/qemu.pid")" 2>/dev/null && cat "$W/qemu.pid"; }
on() {
  pid >/dev/null && return 0
  order=c; [ "$(cat "$W/bootdev" 2>/dev/null)" = pxe ] && order=n
  qemu-system-x86_64 -accel tcg -m 64 -display none -vga none -nodefaults -monitor none \
    -serial "file:$W/serial.log" -boot "order=$order" -name "gw-test-bmc" \
    -daemonize -pidfile "$W/qemu.pid" >>"$W/qemu.log" 2>&1
}
off() {
  p=$(pid) || return 0
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
