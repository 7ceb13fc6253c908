#!/bin/sh
# Make the agent's TLS key and self-signed certificate (openssl CLI), unless both exist.
#   sh make-cert.sh CERT KEY NAME [NAME_OR_IP ...]
# Every NAME and IP goes into subjectAltName (an IP as IP:, a name as DNS:), so the
# certificate can also serve as its own CA (the controller's agent.ca_cert); the controller
# normally pins its fingerprint instead (agent.tls_fingerprint), which
# `relayfleet-agent check` prints. The key is 0600; the certificate is valid for 10 years
# (it is pinned, not trusted).
set -eu
[ $# -ge 3 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
cert=$1; key=$2; name=$3; shift 3
if [ -s "$cert" ] && [ -s "$key" ]; then
    exit 0
fi
san="DNS:$name"
for extra in "$@"; do
    case "$extra" in
        *:*) san="$san,IP:$extra" ;;
        *[!0-9.]*) san="$san,DNS:$extra" ;;
        *) san="$san,IP:$extra" ;;
    esac
done
(
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 3650 -subj "/CN=$name" -addext "subjectAltName=$san" \
        -keyout "$key" -out "$cert" 2>/dev/null
)
chmod 600 "$key"
chmod 644 "$cert"
