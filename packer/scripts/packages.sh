#!/bin/sh
# Debian packages for the service layers an image's machines run, installed at build time and
# left stopped and disabled: the node agent starts what its ServiceInstances say.
set -eu
[ -n "${PACKAGES:-}" ] || { echo "no packages for this image"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
# Services must not start in the image (policy-rc.d 101: "action forbidden").
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $PACKAGES
for p in $PACKAGES; do
  for u in $(dpkg -L "$p" 2>/dev/null | grep -E '^/lib/systemd/system/[^/]+\.service$' | xargs -r -n1 basename); do
    systemctl disable "$u" >/dev/null 2>&1 || true
  done
done
rm -f /usr/sbin/policy-rc.d
apt-get clean
