#!/bin/sh
# Before the image is written: no build key, no machine identity, no logs of the build.
set -eu
rm -f /root/.ssh/authorized_keys
truncate -s 0 /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /etc/ssh/ssh_host_*
cloud-init clean --logs 2>/dev/null || true
rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*
sync
