#!/bin/sh
# The bootstrap server: `groundwork server` as a systemd unit, started once
# /etc/groundwork/server.env exists (written at first boot: first member, or join).
set -eu
cat > /etc/systemd/system/groundwork-server.service <<'UNIT'
[Unit]
Description=Groundwork server
Wants=network-online.target
After=network-online.target
ConditionPathExists=/etc/groundwork/server.env

[Service]
EnvironmentFile=/etc/groundwork/server.env
ExecStart=/usr/local/bin/groundwork server --data-dir /var/lib/groundwork $GROUNDWORK_SERVER_ARGS
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable groundwork-server.service
