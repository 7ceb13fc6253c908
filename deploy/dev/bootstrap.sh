#!/usr/bin/env bash
# Install what relayfleet's lab, tests and demo need on a fresh Debian 12 machine (as root):
# Debian packages (sendmail, m4, make, sshd, iproute2, dnsmasq, redis, postgresql) and a
# virtualenv
# with the project installed in it. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(sendmail-bin sendmail-cf m4 make openssh-server iproute2 dnsmasq-base redis-server
          postgresql sensible-mda procmail sudo procps curl python3-venv openssl)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # The packages' own start-up scripts may try to start daemons in this namespace;
    # the lab runs its own copies inside each host, so a failed start is harmless.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/tmp/relayfleet-apt.log 2>&1 || {
        tail -30 /tmp/relayfleet-apt.log; exit 1; }
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi
stamp=.venv/.relayfleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing relayfleet and its Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[controller,dev]'
    touch "$stamp"
fi
