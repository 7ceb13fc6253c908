#!/bin/sh
# Demo agent container: token from RELAYFLEET_AGENT_TOKEN, sendmail started, agent served.
set -eu
: "${RELAYFLEET_AGENT_TOKEN:?set RELAYFLEET_AGENT_TOKEN (at least 16 characters)}"
mkdir -p /etc/relayfleet
umask 077
printf '%s\n' "$RELAYFLEET_AGENT_TOKEN" > /etc/relayfleet/agent.token
cat > /etc/relayfleet/agent.toml <<TOML
listen = "0.0.0.0:8587"
token_file = "/etc/relayfleet/agent.token"

[mta]
kind = "sendmail"
flavour = "debian"
TOML
/etc/init.d/sendmail start || true
exec relayfleet-agent serve --config /etc/relayfleet/agent.toml
