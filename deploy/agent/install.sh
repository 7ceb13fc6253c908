#!/bin/sh
# Install the relayfleet agent on a mail/PBX host (as root): a virtualenv in
# /opt/relayfleet, /etc/relayfleet/agent.toml, a random token, and the systemd unit.
#   sh install.sh [--flavour debian|rhel] [--mta auto|sendmail|postfix] [--listen ADDR:PORT]
#                 [--source PATH_OR_PIP_SPEC]
# Prints the certificate's fingerprint (pin it: agent.tls_fingerprint) and the token, once,
# on its last line: give it to the controller and keep no copy.
set -eu
flavour=""
mta="auto"
listen="0.0.0.0:8587"
source="relayfleet[agent]"
while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) flavour=$2; shift 2 ;;
        --mta) mta=$2; shift 2 ;;
        --listen) listen=$2; shift 2 ;;
        --source) source=$2; shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$flavour" ]; then
    if [ -f /etc/redhat-release ]; then flavour=rhel; else flavour=debian; fi
fi
case "$flavour" in debian|rhel) ;; *) echo "install.sh: --flavour must be debian or rhel" >&2; exit 2 ;; esac
case "$mta" in auto|sendmail|postfix) ;; *) echo "install.sh: --mta must be auto, sendmail or postfix" >&2; exit 2 ;; esac
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
# TLS by default: a key (0600) and a self-signed certificate; the controller pins the
# certificate's fingerprint (printed at the end), as it pins SSH host keys.
sh "$(dirname "$0")/make-cert.sh" /etc/relayfleet/agent.crt /etc/relayfleet/agent.key \
    "$(hostname -f 2>/dev/null || hostname)"
if [ ! -f /etc/relayfleet/agent.toml ]; then
    cat > /etc/relayfleet/agent.toml <<CONF
listen = "$listen"
token_file = "/etc/relayfleet/agent.token"
tls_cert = "/etc/relayfleet/agent.crt"
tls_key = "/etc/relayfleet/agent.key"

[mta]
kind = "$mta"
flavour = "$flavour"
CONF
fi
checked=$(/opt/relayfleet/bin/relayfleet-agent check --config /etc/relayfleet/agent.toml \
    2>&1 >/dev/null) || { printf '%s\n' "$checked" >&2; exit 1; }
fingerprint=$(printf '%s\n' "$checked" | sed -n 's/^certificate fingerprint: //p')

if [ -d /run/systemd/system ]; then
    here=$(dirname "$0")
    install -m 0644 "$here/relayfleet-agent.service" /etc/systemd/system/relayfleet-agent.service
    systemctl daemon-reload
    systemctl enable --now relayfleet-agent
fi
echo "relayfleet agent installed; pin its certificate in the controller (agent.tls_fingerprint):"
echo "  ${fingerprint:-(no TLS configured in /etc/relayfleet/agent.toml)}"
echo "token:"
cat /etc/relayfleet/agent.token
