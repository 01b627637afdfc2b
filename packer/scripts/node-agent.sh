#!/bin/sh
# The node agent as a systemd unit. It reads the machine config the installer delivered in
# cloud-init's seed (cloud-init applies it and writes /var/lib/groundwork/machine.json) and
# checks in; until there is one, it says so and is restarted. Ordered after cloud-init's
# init and config stages, not cloud-final: that one runs after multi-user.target, which
# wants this unit (an ordering cycle systemd would break by dropping this unit's start).
# Its lines also go to the console, where the lab and a serial-over-LAN session see them.
set -eu
cat > /etc/systemd/system/groundwork-node-agent.service <<'UNIT'
[Unit]
Description=Groundwork node agent
Wants=network-online.target
After=network-online.target cloud-init.service cloud-config.service

[Service]
ExecStart=/usr/local/bin/groundwork node-agent
Restart=always
RestartSec=5
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable groundwork-node-agent.service
