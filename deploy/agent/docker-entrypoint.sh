#!/bin/sh
# Demo agent container: token from RELAYFLEET_AGENT_TOKEN, a self-signed TLS certificate
# (its fingerprint in the log: pin it), sendmail started, agent served over https.
set -eu
: "${RELAYFLEET_AGENT_TOKEN:?set RELAYFLEET_AGENT_TOKEN (at least 16 characters)}"
mkdir -p /etc/relayfleet
umask 077
printf '%s\n' "$RELAYFLEET_AGENT_TOKEN" > /etc/relayfleet/agent.token
relayfleet-agent-make-cert /etc/relayfleet/agent.crt /etc/relayfleet/agent.key "$(hostname)"
cat > /etc/relayfleet/agent.toml <<TOML
listen = "0.0.0.0:8587"
token_file = "/etc/relayfleet/agent.token"
tls_cert = "/etc/relayfleet/agent.crt"
tls_key = "/etc/relayfleet/agent.key"

[mta]
kind = "sendmail"
flavour = "debian"
TOML
/etc/init.d/sendmail start || true
relayfleet-agent check --config /etc/relayfleet/agent.toml >/dev/null  # prints the fingerprint
exec relayfleet-agent serve --config /etc/relayfleet/agent.toml
