#!/usr/bin/env bash
# Install what relayfleet's lab, tests and demo need on a fresh Debian 12 machine (as root):
# Debian packages (sendmail, m4, make, sshd, iproute2, dnsmasq, redis, postgresql, openssl
# and ca-certificates, systemd for systemd-analyze, debootstrap for the Debian 11 tree,
# the POSIX sh checker "shellcheck" for install.sh, busybox, and chromium with its chromedriver for
# the console's browser tests), Debian's postfix package downloaded (never installed) for
# the lab's Postfix hosts, and a virtualenv with the project installed in it. Safe to run
# again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(sendmail-bin sendmail-cf m4 make openssh-server iproute2 dnsmasq-base redis-server
          postgresql sensible-mda procmail sudo procps curl python3-venv openssl
          ca-certificates)
# systemd-analyze checks the shipped units; debootstrap builds a Debian 11 tree whose
# Python 3.9 runs the agent's tests; shellcheck checks install.sh as POSIX sh; busybox's sh
# is the smallest shell the SSH executor's persistent shell must work with.
packages+=(systemd debootstrap shellcheck busybox)
# The console's browser tests drive Debian's chromium through Debian's chromedriver (Selenium
# is told both paths and never downloads a browser or a driver of its own).
packages+=(chromium chromium-driver)
# Postfix lab hosts run the postfix package unpacked over /usr in their own mount namespace
# (installing it would remove sendmail-bin): its runtime libraries and what its scripts use
# (the chroot set-up copies CA files with cpio; Debian's main.cf names the snakeoil cert).
packages+=(libicu72 libnsl2 libdb5.3 libsasl2-2 libsasl2-modules libssl3 cpio ssl-cert netbase
           adduser)
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

# The postfix .deb for the lab (tests/lab/lab.py unpacks it into $lab_cache/postfix-VERSION).
lab_cache=${RELAYFLEET_LAB_CACHE:-/var/cache/relayfleet-lab}
if ! compgen -G "$lab_cache/postfix_*.deb" >/dev/null; then
    echo "bootstrap: downloading Debian's postfix package into $lab_cache (not installing it)"
    mkdir -p "$lab_cache"
    download() { (cd "$lab_cache" && apt-get download postfix) >/tmp/relayfleet-apt.log 2>&1; }
    download || { apt-get update -qq && download; } || {
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
