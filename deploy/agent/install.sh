#!/bin/sh
# Install, upgrade or repair the relayfleet agent from its offline bundle (as root, no network).
#   sh install.sh --bundle relayfleet-agent-V.tar.gz --sha256 HEX [options]
#   sh ./install.sh [options]            (from an extracted bundle: uses ./wheels)
# options: --listen ADDR:PORT (default 0.0.0.0:8587)  --mta auto|sendmail|postfix
#          --flavour debian|rhel  --python PATH (default python3, 3.9 or newer)
#          --token-stdin (a NEW agent.token's token on stdin)  --rotate-token (replace it)
#          --cert-name NAME (another name or IP in a new certificate; repeatable)
# Layout: /opt/relayfleet/versions/V (a virtualenv), /opt/relayfleet/current -> versions/V,
# /etc/relayfleet/{agent.toml,agent.token,agent.crt,agent.key} made only when absent.
# Exit: 0 ok (also nothing to do), 2 usage, 3 the new version failed its check or health
# check and the previous one runs again, 1 anything else (stderr says what to do).
# The last line of stdout is: RELAYFLEET-INSTALL {json}. The token is never printed.
set -eu

PREFIX=/opt/relayfleet
ETC=/etc/relayfleet
CONFIG=$ETC/agent.toml
TOKEN_FILE=$ETC/agent.token
UNIT=/etc/systemd/system/relayfleet-agent.service
PIDFILE=/run/relayfleet-agent.pid
LOG=/var/log/relayfleet-agent.log
HEALTH_WAIT=30

usage() { echo "install.sh: $1 (try --help)" >&2; exit 2; }
die() { echo "install.sh: $1" >&2; exit 1; }

bundle="" sha256="" listen="0.0.0.0:8587" mta="auto" flavour="" python="python3"
token_stdin=false rotate=false cert_names=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        --token-stdin) token_stdin=true; shift; continue ;;
        --rotate-token) rotate=true; token_stdin=true; shift; continue ;;
        --bundle|--sha256|--listen|--mta|--flavour|--python|--cert-name)
            [ $# -ge 2 ] || usage "$1 needs a value" ;;
        *) usage "unknown option $1" ;;
    esac
    case "$1" in
        --bundle) bundle=$2 ;;
        --sha256) sha256=$(printf '%s' "$2" | tr 'A-F' 'a-f') ;;
        --listen) listen=$2 ;;
        --mta) mta=$2 ;;
        --flavour) flavour=$2 ;;
        --python) python=$2 ;;
        --cert-name)
            case "$2" in
                ''|-*|*[!A-Za-z0-9.:-]*) usage "--cert-name takes a host name or an IP" ;;
            esac
            cert_names="$cert_names $2" ;;
    esac
    shift 2
done
case "$mta" in auto|sendmail|postfix) ;; *) usage "--mta must be auto, sendmail or postfix" ;; esac
if [ -z "$flavour" ]; then
    if [ -f /etc/redhat-release ]; then flavour=rhel; else flavour=debian; fi
fi
case "$flavour" in debian|rhel) ;; *) usage "--flavour must be debian or rhel" ;; esac
port=${listen##*:}
# It goes into agent.toml as it is: letters, digits, '.', ':', '-' and IPv6's brackets only.
case "$(printf '%s' "$listen" | tr -d '[]')" in
    :*|*[!0-9A-Za-z.:-]*) usage "--listen must be ADDR:PORT" ;;
    *:*) ;;
    *) usage "--listen must be ADDR:PORT" ;;
esac
case "$port" in ''|*[!0-9]*) usage "--listen must end in a port number" ;; esac
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || usage "--listen's port must be 1 to 65535"
if [ -n "$bundle" ]; then
    [ -n "$sha256" ] || usage "--bundle needs --sha256 (the archive's checksum, from its .sha256 file)"
    case "$sha256" in
        *[!0-9a-f]*) usage "--sha256 takes 64 hex digits" ;;
    esac
    [ ${#sha256} -eq 64 ] || usage "--sha256 takes 64 hex digits"
fi
[ "$(id -u)" = 0 ] || die "run as root (sudo sh install.sh ...)"

# pip, python and the agent see nothing of the caller's Python settings (a pip.conf's extra
# index, a PYTHONPATH): the bundle is the only source.
for var in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$var"; done
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE PYTHONNOUSERSITE 2>/dev/null || true
PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PIP_CONFIG_FILE PIP_DISABLE_PIP_VERSION_CHECK PIP_NO_INPUT
umask 077

token=""
if $token_stdin; then
    IFS= read -r token || [ -n "$token" ] || die "--token-stdin: no token on stdin"
    case "$token" in
        *[!A-Za-z0-9._~+/=-]*) die "--token-stdin: the token may hold only letters, digits and ._~+/=-" ;;
    esac
    [ ${#token} -ge 16 ] || die "--token-stdin: the token must be at least 16 characters"
fi

host_python=$(command -v "$python" 2>/dev/null) ||
    die "no $python on this host: install Python 3.9 or newer (python3), or name one with --python"

work=$(mktemp -d /tmp/relayfleet-install.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM HUP

if [ -n "$bundle" ]; then
    [ -f "$bundle" ] || die "no bundle at $bundle"
    if command -v sha256sum >/dev/null 2>&1; then
        actual=$(sha256sum "$bundle" | cut -d' ' -f1)
    else
        actual=$("$host_python" -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$bundle")
    fi
    [ "$actual" = "$sha256" ] ||
        die "refused: $bundle has sha256 $actual, not the $sha256 given; nothing was changed (copy the bundle again)"
    tar -xzf "$bundle" -C "$work" || die "cannot unpack $bundle"
    src=""
    for dir in "$work"/relayfleet-agent-*; do [ -d "$dir" ] && src=$dir; done
    [ -n "$src" ] || die "$bundle holds no relayfleet-agent-V directory"
else
    src=$(cd "$(dirname "$0")" && pwd)
    [ -f "$src/MANIFEST.json" ] ||
        die "no MANIFEST.json beside install.sh: give --bundle FILE --sha256 HEX, or run the install.sh of an extracted bundle"
fi

# The bundle's files against its manifest, and this Python against the ones it serves.
# (Old Pythons must get as far as the version check: no f-strings here.)
read_manifest='import hashlib, json, os, platform, re, sys
if sys.version_info < (3, 9):
    sys.exit("install.sh: Python %d.%d is too old for the agent (3.9 or newer): install "
             "python3.9+ or name one with --python" % sys.version_info[:2])
src = sys.argv[1]
with open(os.path.join(src, "MANIFEST.json")) as f:
    manifest = json.load(f)
for name, digest in sorted(manifest["files"].items()):
    with open(os.path.join(src, name), "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != digest:
            sys.exit("install.sh: %s does not match MANIFEST.json: the bundle is damaged" % name)
version = manifest["version"]
if not re.fullmatch(r"[0-9][0-9a-z.]*", version) or ".." in version:
    sys.exit("install.sh: MANIFEST.json names no usable version")
machine = platform.machine()
if not manifest["platform"].endswith("_" + machine):
    sys.exit("install.sh: this bundle is for %s hosts; this one is %s"
             % (manifest["platform"], machine))
libc, libc_version = platform.libc_ver()
if libc != "glibc":
    sys.exit("install.sh: the wheels of this bundle need glibc 2.17 or newer; this Python runs on "
             "%s" % (libc or "another C library"))
python = "%d.%d" % sys.version_info[:2]
if python not in manifest["pythons"]:
    sys.exit("install.sh: this bundle serves Python %s; %s is %s: name one of those with "
             "--python" % (", ".join(manifest["pythons"]), sys.executable, python))
pip = [p for p in manifest["pinned"][python] if p.startswith("pip==")]
print(version, python, "pip-%s-py3-none-any.whl" % pip[0][5:] if pip else "")'
info=$("$host_python" -c "$read_manifest" "$src") || exit 1
set -- $info
version=$1 pyver=$2 pip_wheel=${3:-}
[ -n "$pip_wheel" ] && [ -f "$src/wheels/$pip_wheel" ] || die "the bundle has no pip for Python $pyver"

if { [ ! -s "$ETC/agent.crt" ] || [ ! -s "$ETC/agent.key" ]; } &&
        ! command -v openssl >/dev/null 2>&1; then
    die "the agent's TLS certificate is made with openssl, which this host lacks: install it (Debian/Ubuntu: apt install openssl; RHEL: dnf install openssl), or put agent.crt and agent.key in $ETC"
fi
if [ -e "$PREFIX/bin/relayfleet-agent" ] && [ ! -L "$PREFIX/current" ]; then
    die "an agent installed by an older install.sh is in $PREFIX (a plain virtualenv); stop it, remove $PREFIX/bin, lib, lib64, include and pyvenv.cfg (keep $ETC: its config, token and certificate are reused) and run install.sh again"
fi

previous=""
if [ -L "$PREFIX/current" ]; then
    previous=$(readlink "$PREFIX/current")
    previous=${previous#versions/}
    [ -f "$PREFIX/versions/$previous/VERSION" ] || previous=""
fi
if [ -d /run/systemd/system ]; then service=systemd; else service=daemon; fi

# -- the service ------------------------------------------------------------------------
daemon_pid() {
    [ -f "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\000' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q relayfleet-agent || return 1
    echo "$pid"
}

nap() { sleep 0.2 2>/dev/null || sleep 1; }

running() {
    if [ "$service" = systemd ]; then
        systemctl is-active --quiet relayfleet-agent
    else
        daemon_pid >/dev/null
    fi
}

stop_agent() {
    if [ "$service" = systemd ]; then
        systemctl stop relayfleet-agent 2>/dev/null || true
        return 0
    fi
    pid=$(daemon_pid) || { rm -f "$PIDFILE"; return 0; }
    kill "$pid" 2>/dev/null || true
    n=0
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 50 ]; do nap; n=$((n + 1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

start_agent() {
    if [ "$service" = systemd ]; then
        # A failed start is the health check's to report (and to roll back), not set -e's.
        systemctl daemon-reload || true
        systemctl enable relayfleet-agent >/dev/null 2>&1 || true
        systemctl restart relayfleet-agent || echo "install.sh: systemctl restart relayfleet-agent failed" >&2
        return 0
    fi
    command -v setsid >/dev/null 2>&1 || die "no setsid on this host (util-linux)"
    stop_agent
    rm -f "$PIDFILE"
    # Its own session, no terminal, nothing of ours open: it outlives this script (and an
    # SSH session running it). The shell writes its pid, then becomes the agent.
    (cd / && setsid sh -c 'echo $$ > "$1"; shift; exec "$@"' relayfleet-agent "$PIDFILE" \
        "$PREFIX/current/bin/relayfleet-agent" serve --config "$CONFIG" \
        < /dev/null >> "$LOG" 2>&1 &)
    n=0
    while [ ! -s "$PIDFILE" ] && [ $n -lt 25 ]; do nap; n=$((n + 1)); done
}

# -- health: the agent of version $1 answers on its address, with the pinned certificate ---
health_check='import hashlib, http.client, json, os, ssl, sys, time
host, port, want, fingerprint, pidfile, wait = sys.argv[1:7]
deadline = time.monotonic() + float(wait)
last = "nothing listens yet"
while True:
    try:
        if fingerprint:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # pinned below, as the controller does
            conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=context)
            conn.connect()
            der = conn.sock.getpeercert(binary_form=True)
            if "sha256:" + hashlib.sha256(der).hexdigest() != fingerprint:
                sys.exit("install.sh: %s:%s presents another certificate than agent.crt"
                         % (host, port))
        else:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/v1/health")
        answer = json.loads(conn.getresponse().read().decode())
        conn.close()
        if answer.get("status") == "ok" and answer.get("version") == want:
            sys.exit(0)
        last = "it answers version %s" % answer.get("version")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        last = str(exc) or type(exc).__name__
    if pidfile:
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), 0)
        except (OSError, ValueError):
            sys.exit("install.sh: the agent %s exited (%s)" % (want, last))
    if time.monotonic() > deadline:
        sys.exit("install.sh: the agent %s does not answer its health check within %s s (%s)"
                 % (want, wait, last))
    time.sleep(0.3)'

fingerprint="" address="" scheme=""
# Run the agent's own check with version $1's virtualenv; keep the fingerprint and address.
agent_check() {
    "$PREFIX/versions/$1/bin/relayfleet-agent" check --config "$CONFIG" \
        > "$work/check.json" 2> "$work/check.err" || return 1
    fingerprint=$(sed -n 's/^certificate fingerprint: //p' "$work/check.err")
    address=$("$PREFIX/versions/$1/bin/python" -c 'import json, sys
listen = json.load(open(sys.argv[1]))["listen"]
host, _, port = listen.rpartition(":")
host = {"0.0.0.0": "127.0.0.1", "[::]": "::1", "::": "::1"}.get(host, host.strip("[]"))
print(host, port)' "$work/check.json") || return 1
}

healthy() {  # VERSION WAIT
    set -- "$1" "$2" $address
    pidfile=""
    [ "$service" = daemon ] && pidfile=$PIDFILE
    "$PREFIX/versions/$1/bin/python" -c "$health_check" "$3" "$4" "$1" "$fingerprint" \
        "$pidfile" "$2"
}

report() {  # CHANGED TOKEN ROLLED_BACK
    prev=null
    [ -n "$previous" ] && prev="\"$previous\""
    fp=null
    [ -n "$fingerprint" ] && fp="\"$fingerprint\""
    now_listen=$(sed -n 's/^  "listen": "\(.*\)",$/\1/p' "$work/check.json" 2>/dev/null || true)
    printf 'RELAYFLEET-INSTALL {"version": "%s", "previous": %s, "changed": %s, "token": "%s", "fingerprint": %s, "listen": "%s", "rolled_back": %s, "service": "%s"}\n' \
        "$version" "$prev" "$1" "$2" "$fp" "${now_listen:-$listen}" "$3" "$service"
}

# -- configuration: made only when absent ------------------------------------------------
mkdir -p "$ETC" "$PREFIX/versions"
token_state=kept
if [ ! -s "$TOKEN_FILE" ]; then
    if [ -n "$token" ]; then
        printf '%s\n' "$token" > "$TOKEN_FILE.new"
    else
        "$host_python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$TOKEN_FILE.new"
    fi
    chmod 600 "$TOKEN_FILE.new"
    mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
    token_state=written
elif $rotate; then
    cp -p "$TOKEN_FILE" "$work/token.previous"
    printf '%s\n' "$token" > "$TOKEN_FILE.new"
    chmod 600 "$TOKEN_FILE.new"
    mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
    token_state=rotated
elif [ -n "$token" ]; then
    echo "install.sh: kept the existing $TOKEN_FILE (--rotate-token replaces it)" >&2
fi
chmod 600 "$TOKEN_FILE"
# TLS by default: a key (0600) and a self-signed certificate; the controller pins the
# certificate's fingerprint (printed at the end), as it pins SSH host keys.
# shellcheck disable=SC2086 # the names are checked words
name=$(hostname -f 2>/dev/null || true)
[ -n "$name" ] || name=$(hostname)
sh "$src/make-cert.sh" "$ETC/agent.crt" "$ETC/agent.key" "$name" $cert_names ||
    die "openssl could not make $ETC/agent.crt and agent.key for $name: make them by hand (deploy/agent/make-cert.sh) and run install.sh again"
if [ ! -f "$CONFIG" ]; then
    cat > "$CONFIG.new" <<CONF
listen = "$listen"
token_file = "/etc/relayfleet/agent.token"
tls_cert = "/etc/relayfleet/agent.crt"
tls_key = "/etc/relayfleet/agent.key"

[mta]
kind = "$mta"
flavour = "$flavour"
CONF
    chmod 600 "$CONFIG.new"
    mv -f "$CONFIG.new" "$CONFIG"
fi

# -- the same version already runs: nothing to do (or a restart, or a repair) -------------
if [ "$previous" = "$version" ] &&
        ! "$PREFIX/versions/$version/bin/python" -c 'import agent.cli' >/dev/null 2>&1; then
    echo "install.sh: the installed $version is damaged (its agent does not import): installing it again" >&2
    stop_agent
    previous=""
fi
if [ "$previous" = "$version" ]; then
    agent_check "$version" || { cat "$work/check.err" >&2; die "relayfleet-agent check fails with $CONFIG: fix it and run install.sh again"; }
    if [ "$token_state" = kept ] && running && healthy "$version" 5 2>/dev/null; then
        echo "relayfleet agent $version is installed and healthy: nothing to do"
        report false "$token_state" false
        exit 0
    fi
    start_agent
    if ! healthy "$version" "$HEALTH_WAIT"; then
        # The token it had stays: the controller still holds that one.
        [ -f "$work/token.previous" ] && mv -f "$work/token.previous" "$TOKEN_FILE"
        die "the agent $version does not run: see $LOG (and relayfleet-agent check --config $CONFIG)"
    fi
    echo "relayfleet agent $version restarted"
    report true "$token_state" false
    exit 0
fi

# -- a new version: its own virtualenv, from the bundle's wheels only --------------------
venv=$PREFIX/versions/$version
rm -rf "$venv"
"$host_python" -m venv --without-pip "$venv" ||
    die "cannot make a virtualenv with $host_python (Debian/Ubuntu: apt install python3-venv)"
"$venv/bin/python" "$src/wheels/$pip_wheel/pip" install --quiet --no-index --no-cache-dir \
    --no-warn-script-location --find-links "$src/wheels" --require-hashes \
    -r "$src/requirements/$pyver.txt" ||
    { rm -rf "$venv"; die "installing the agent's wheels into $venv failed (above)"; }
"$venv/bin/python" -m pip check >/dev/null ||
    { rm -rf "$venv"; die "the agent's dependencies in $venv do not fit together (pip check)"; }
printf '%s\n' "$version" > "$venv/VERSION"
chmod -R go+rX "$venv"
# SELinux hosts (RHEL): the labels of /opt and /etc for what was just written.
if command -v restorecon >/dev/null 2>&1; then
    restorecon -R "$PREFIX" "$ETC" 2>/dev/null || true
fi

switch_to() {
    ln -sfn "versions/$1" "$PREFIX/.current.new"
    mv -T "$PREFIX/.current.new" "$PREFIX/current"
}

rollback() {
    echo "install.sh: $1" >&2
    stop_agent
    if [ -f "$work/unit.previous" ]; then
        cp "$work/unit.previous" "$UNIT"
        chmod 644 "$UNIT"
    fi
    if [ -f "$work/token.previous" ]; then
        mv -f "$work/token.previous" "$TOKEN_FILE"
        token_state=kept
    fi
    if [ -n "$previous" ]; then
        switch_to "$previous"
        start_agent
        if agent_check "$previous" && healthy "$previous" "$HEALTH_WAIT"; then
            echo "install.sh: rolled back to $previous" >&2
        else
            echo "install.sh: rolled back to $previous, but it does not answer either: see $LOG" >&2
        fi
    else
        rm -f "$PREFIX/current"
        if [ "$service" = systemd ] && [ ! -f "$work/unit.previous" ]; then
            systemctl disable relayfleet-agent >/dev/null 2>&1 || true
            rm -f "$UNIT"
            systemctl daemon-reload || true
        fi
        echo "install.sh: rolled back: removed $version again (no previous version)" >&2
    fi
    rm -rf "$venv"
    report false "$token_state" true
    exit 3
}

switch_to "$version"
if [ "$service" = systemd ]; then
    [ -f "$UNIT" ] && cp "$UNIT" "$work/unit.previous"
    install -m 0644 "$src/relayfleet-agent.service" "$UNIT"
fi
if ! agent_check "$version"; then
    cat "$work/check.err" >&2
    rollback "relayfleet-agent $version check --config $CONFIG failed"
fi
start_agent
healthy "$version" "$HEALTH_WAIT" || rollback "the agent $version failed its health check (see $LOG)"

# Keep the running version, the one before it and one more.
keep_extra=1
for dir in $(ls -1t "$PREFIX/versions"); do
    [ "$dir" = "$version" ] || [ "$dir" = "$previous" ] && continue
    if [ $keep_extra -gt 0 ]; then keep_extra=$((keep_extra - 1)); continue; fi
    rm -rf "${PREFIX:?}/versions/$dir"
done

echo "relayfleet agent $version installed${previous:+ (was $previous)}; pin its certificate in the controller (agent.tls_fingerprint):"
echo "  ${fingerprint:-(no TLS configured in $CONFIG)}"
report true "$token_state" false
