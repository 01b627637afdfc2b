#!/bin/sh
# Every image: the groundwork binary executable, its directories, the journal kept.
set -eu
chmod 0755 /usr/local/bin/groundwork
/usr/local/bin/groundwork --version
install -d -m 0755 /var/lib/groundwork /etc/groundwork
install -d -m 0755 /var/log/journal
