#!/bin/sh
# The node agent as a systemd unit. It applies the machine config the installer delivered
# (cloud-init's seed, or the config partition) and checks in; until there is one, it says so
# and is restarted.
set -eu
cat > /etc/systemd/system/groundwork-node-agent.service <<'UNIT'
[Unit]
Description=Groundwork node agent
Wants=network-online.target
After=network-online.target cloud-final.service

[Service]
ExecStart=/usr/local/bin/groundwork node-agent
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable groundwork-node-agent.service
