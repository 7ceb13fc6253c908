#!/bin/sh
# Install the relayfleet agent on a mail/PBX host (as root): a virtualenv in
# /opt/relayfleet, /etc/relayfleet/agent.toml, a random token, and the systemd unit.
#   sh install.sh [--flavour debian|rhel] [--listen ADDR:PORT] [--source PATH_OR_PIP_SPEC]
# Prints the token once, on its last line: give it to the controller and keep no copy.
set -eu
flavour=""
listen="0.0.0.0:8587"
source="relayfleet[agent]"
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) flavour=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --source) source=$2; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$flavour" ]; then
    if [ -f /etc/redhat-release ]; then flavour=rhel; else flavour=debian; fi
fi
case "$flavour" in debian|rhel) ;; *) echo "install.sh: --flavour must be debian or rhel" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

python3 -m venv /opt/relayfleet
/opt/relayfleet/bin/pip install -q --upgrade pip
/opt/relayfleet/bin/pip install -q "$source"

umask 077
mkdir -p /etc/relayfleet
if [ ! -f /etc/relayfleet/agent.token ]; then
    /opt/relayfleet/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))' \
        > /etc/relayfleet/agent.token
fi
chmod 600 /etc/relayfleet/agent.token
if [ ! -f /etc/relayfleet/agent.toml ]; then
    cat > /etc/relayfleet/agent.toml <<CONF
listen = "$listen"
token_file = "/etc/relayfleet/agent.token"

[mta]
kind = "sendmail"
flavour = "$flavour"
CONF
fi
/opt/relayfleet/bin/relayfleet-agent check --config /etc/relayfleet/agent.toml >/dev/null

if [ -d /run/systemd/system ]; then
    here=$(dirname "$0")
    install -m 0644 "$here/relayfleet-agent.service" /etc/systemd/system/relayfleet-agent.service
    systemctl daemon-reload
    systemctl enable --now relayfleet-agent
fi
echo "relayfleet agent installed; token:"
cat /etc/relayfleet/agent.token
