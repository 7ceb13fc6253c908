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
# check and the previous one runs again, 4 busy: another install.sh runs on this host
# (nothing was changed: run it again later), 1 anything else (stderr says what to do).
# The last line of stdout is: RELAYFLEET-INSTALL {json}. The token is never printed.
# A cut session (SSH) does not stop a run: its messages also go to
# /var/log/relayfleet-install.log (the last run's, root only), and what it changed is undone
# unless it finished. The bundle is copied to a private directory first: the login that
# uploads it must be root or root-equivalent (sudo) anyway.
set -eu

PREFIX=/opt/relayfleet
ETC=/etc/relayfleet
CONFIG=$ETC/agent.toml
TOKEN_FILE=$ETC/agent.token
UNIT=/etc/systemd/system/relayfleet-agent.service
PIDFILE=/run/relayfleet-agent.pid
LOG=/var/log/relayfleet-agent.log
HEALTH_WAIT=30
LOCK=/run/relayfleet-install.lock
INSTALL_LOG=/var/log/relayfleet-install.log
EXIT_BUSY=4

# The caller's channel (an SSH session that may be cut at any time) is fd 3 (stdout) and fd 4
# (stderr), /dev/null when closed; once the run's log exists, fds 1 and 2 (this script's and
# every command's output) go to it. A write to the channel may fail: it never stops the run.
if (exec 9>&1) 2>/dev/null; then exec 3>&1; else exec 3>/dev/null; fi
if (exec 9>&2) 2>/dev/null; then exec 4>&2; else exec 4>/dev/null; fi
trap '' HUP PIPE
run_log=""
to_log() { if [ -n "$run_log" ]; then printf '%s\n' "$1" >> "$run_log" 2>/dev/null || true; fi; }
say() { to_log "$1"; printf '%s\n' "$1" >&3 2>/dev/null || true; }
warn() { to_log "$1"; printf '%s\n' "$1" >&4 2>/dev/null || true; }
relay() { cat "$1" 2>/dev/null || true; cat "$1" >&4 2>/dev/null || true; }  # a file, to both

usage() { warn "install.sh: $1 (try --help)"; exit 2; }
die() { warn "install.sh: $1"; exit 1; }

command_line="$*"  # for the log (no secret is ever an argument)
bundle="" sha256="" listen="0.0.0.0:8587" mta="auto" flavour="" python="python3"
token_stdin=false rotate=false cert_names=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,18p' "$0" >&3 2>/dev/null || true; exit 0 ;;
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
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then usage "--listen's port must be 1 to 65535"; fi
if [ -n "$bundle" ]; then
    [ -n "$sha256" ] || usage "--bundle needs --sha256 (the archive's checksum, from its .sha256 file)"
    case "$sha256" in
        *[!0-9a-f]*) usage "--sha256 takes 64 hex digits" ;;
    esac
    [ ${#sha256} -eq 64 ] || usage "--sha256 takes 64 hex digits"
fi
[ "$(id -u)" = 0 ] || die "run as root (sudo sh install.sh ...)"
# Paths the caller gave, made absolute; then nothing of the login's directory is used (its
# files could change under us, and root's Pythons run with -I: no cwd on sys.path).
if [ -n "$bundle" ]; then
    case "$bundle" in /*) ;; *) bundle=$(pwd)/$bundle ;; esac
    given_src=""
else
    given_src=$(cd "$(dirname "$0")" && pwd)
fi
cd /

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
if [ -d /run/systemd/system ]; then service=systemd; else service=daemon; fi
if [ "$service" = daemon ]; then
    command -v setsid >/dev/null 2>&1 || die "no setsid on this host (util-linux)"
fi

# One install.sh at a time on a host (a second one would remove the virtualenv the first
# one installs into, or write another token).
command -v flock >/dev/null 2>&1 || die "no flock on this host (util-linux)"
exec 9> "$LOCK"
if ! flock -n 9; then
    warn "install.sh: busy: another install.sh runs on this host (it holds $LOCK); nothing was changed: run it again when that one has finished"
    exit "$EXIT_BUSY"
fi

work=$(mktemp -d /tmp/relayfleet-install.XXXXXX)
run_log=$work/install.log
exec >> "$run_log" 2>&1
to_log "install.sh $command_line (started $(date -u '+%Y-%m-%dT%H:%M:%SZ' 2>/dev/null || true))"

# What this run changed, undone on any exit but a finished run (see on_exit).
committed=false phase="" restarted=false new_venv="" made_files="" token_state=kept
undo_token() {  # the token of before this run again (none, if this run wrote the first one)
    if [ -f "$work/token.previous" ]; then
        mv -f "$work/token.previous" "$TOKEN_FILE"
    elif [ "$token_state" = written ]; then
        rm -f "$TOKEN_FILE"
    fi
    token_state=kept
}
on_exit() {
    code=$?
    trap '' INT TERM
    if ! $committed; then
        # stopped between the switch and the health check (set -e): back to what ran before
        if [ "$phase" = switched ]; then undo_changes "stopped before it finished (exit $code)"; fi
        if [ "$token_state" != kept ]; then
            had_previous=false
            [ -f "$work/token.previous" ] && had_previous=true
            undo_token
            # an agent this run started with the new token gets the previous one back
            if $had_previous && $restarted; then start_agent || true; fi
        fi
        [ -n "$new_venv" ] && [ "$phase" != switched ] && rm -rf "$new_venv"
        for made in $made_files; do rm -f "$made"; done
    fi
    install -m 600 "$run_log" "$INSTALL_LOG" 2>/dev/null || true
    rm -rf "$work"
    exit "$code"
}
on_signal() {
    trap '' INT TERM
    [ "$phase" = switched ] && rollback "stopped by a signal"
    die "stopped by a signal: what this run changed is undone"
}
trap on_exit EXIT
trap on_signal INT TERM

# The bundle is copied here (root's, private) and only the copy is checked and used.
if [ -n "$bundle" ]; then
    [ -f "$bundle" ] || die "no bundle at $bundle"
    cp "$bundle" "$work/bundle.tar.gz" || die "cannot copy $bundle"
    if command -v sha256sum >/dev/null 2>&1; then
        actual=$(sha256sum "$work/bundle.tar.gz" | cut -d' ' -f1)
    else
        actual=$("$host_python" -I -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$work/bundle.tar.gz")
    fi
    [ "$actual" = "$sha256" ] ||
        die "refused: $bundle has sha256 $actual, not the $sha256 given; nothing was changed (copy the bundle again)"
    mkdir "$work/unpacked"
    tar -xzf "$work/bundle.tar.gz" -C "$work/unpacked" || die "cannot unpack $bundle"
    src=""
    for dir in "$work"/unpacked/relayfleet-agent-*; do [ -d "$dir" ] && src=$dir; done
    [ -n "$src" ] || die "$bundle holds no relayfleet-agent-V directory"
else
    [ -f "$given_src/MANIFEST.json" ] ||
        die "no MANIFEST.json beside install.sh: give --bundle FILE --sha256 HEX, or run the install.sh of an extracted bundle"
    src=$work/unpacked
    cp -RL "$given_src" "$src" || die "cannot copy $given_src"
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
# shared/schemas.py AGENT_VERSION_PATTERN, verbatim (a unit test holds them together)
VERSION = r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?"
if not re.fullmatch(VERSION, version):
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
info=$("$host_python" -I -c "$read_manifest" "$src" 2> "$work/manifest.err") ||
    { relay "$work/manifest.err"; exit 1; }
# shellcheck disable=SC2086 # split on purpose: the manifest step printed checked words
set -- $info
version=$1 pyver=$2 pip_wheel=${3:-}
if [ -z "$pip_wheel" ] || [ ! -f "$src/wheels/$pip_wheel" ]; then
    die "the bundle has no pip for Python $pyver"
fi

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
    restarted=true
    if [ "$service" = systemd ]; then
        # A failed start is the health check's to report (and to roll back), not set -e's.
        systemctl daemon-reload || true
        systemctl enable relayfleet-agent >/dev/null 2>&1 || true
        systemctl restart relayfleet-agent || warn "install.sh: systemctl restart relayfleet-agent failed"
        return 0
    fi
    stop_agent
    rm -f "$PIDFILE"
    # Its own session, no terminal, nothing of ours open (not the caller's channel, not the
    # lock): it outlives this script (and an SSH session running it). The shell writes its
    # pid, then becomes the agent.
    # shellcheck disable=SC2016 # $$ and $1 are the inner shell's
    (cd / && setsid sh -c 'echo $$ > "$1"; shift; exec "$@"' relayfleet-agent "$PIDFILE" \
        "$PREFIX/current/bin/relayfleet-agent" serve --config "$CONFIG" \
        < /dev/null >> "$LOG" 2>&1 3>&- 4>&- 9>&- &)
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

# What `relayfleet-agent check` resolved (check.json), in one step: the listen address, the
# host and port to ask for health, the certificate's fingerprint (none without TLS).
read_check='import json, sys
with open(sys.argv[1]) as f:
    facts = json.load(f)
listen = facts["listen"]
host, _, port = listen.rpartition(":")
host = {"0.0.0.0": "127.0.0.1", "[::]": "::1", "::": "::1"}.get(host, host.strip("[]"))
print(listen, host, port, facts.get("tls_fingerprint") or "")'

fingerprint="" checked_listen="" check_host="" check_port=""
# Run the agent's own check with version $1's virtualenv; keep what it resolved.
agent_check() {
    "$PREFIX/versions/$1/bin/relayfleet-agent" check --config "$CONFIG" \
        > "$work/check.json" 2> "$work/check.err" || return 1
    facts=$("$PREFIX/versions/$1/bin/python" -I -c "$read_check" "$work/check.json") ||
        return 1
    # shellcheck disable=SC2086 # split on purpose: four words, none empty but the last
    set -- $facts
    checked_listen=$1 check_host=$2 check_port=$3 fingerprint=${4:-}
}

healthy() {  # VERSION WAIT [quiet]
    pidfile=""
    [ "$service" = daemon ] && pidfile=$PIDFILE
    "$PREFIX/versions/$1/bin/python" -I -c "$health_check" "$check_host" "$check_port" "$1" \
        "$fingerprint" "$pidfile" "$2" 2> "$work/health.err" && return 0
    if [ "${3:-}" = quiet ]; then cat "$work/health.err"; else relay "$work/health.err"; fi
    return 1
}

report() {  # CHANGED TOKEN ROLLED_BACK
    prev=null
    [ -n "$previous" ] && prev="\"$previous\""
    fp=null
    [ -n "$fingerprint" ] && fp="\"$fingerprint\""
    say "$(printf 'RELAYFLEET-INSTALL {"version": "%s", "previous": %s, "changed": %s, "token": "%s", "fingerprint": %s, "listen": "%s", "rolled_back": %s, "service": "%s"}' \
        "$version" "$prev" "$1" "$2" "$fp" "${checked_listen:-$listen}" "$3" "$service")"
}

# -- configuration: made only when absent ------------------------------------------------
mkdir -p "$ETC" "$PREFIX/versions"
# The token changes last (put_token), after the new version's virtualenv and its check; until
# the run finishes, the one before it is kept aside ($work/token.previous) and put back.
token_todo=none
if [ ! -s "$TOKEN_FILE" ]; then
    token_todo=fresh
elif $rotate; then
    token_todo=rotate
elif [ -n "$token" ]; then
    warn "install.sh: kept the existing $TOKEN_FILE (--rotate-token replaces it)"
fi
put_token() {
    if [ "$token_todo" = rotate ]; then
        cp -p "$TOKEN_FILE" "$work/token.previous"
        token_state=rotated
    else
        token_state=written
    fi
    if [ -n "$token" ]; then
        printf '%s\n' "$token" > "$TOKEN_FILE.new"
    else
        "$host_python" -I -c 'import secrets; print(secrets.token_urlsafe(32))' > "$TOKEN_FILE.new"
    fi
    chmod 600 "$TOKEN_FILE.new"
    mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
    token_todo=none
}
[ ! -e "$TOKEN_FILE" ] || chmod 600 "$TOKEN_FILE"
# TLS by default: a key (0600) and a self-signed certificate; the controller pins the
# certificate's fingerprint (printed at the end), as it pins SSH host keys.
name=$(hostname -f 2>/dev/null || true)
[ -n "$name" ] || name=$(hostname)
if [ ! -s "$ETC/agent.crt" ] || [ ! -s "$ETC/agent.key" ]; then
    made_files="$made_files $ETC/agent.crt $ETC/agent.key"
fi
# shellcheck disable=SC2086 # the names are checked words
sh "$src/make-cert.sh" "$ETC/agent.crt" "$ETC/agent.key" "$name" $cert_names ||
    die "openssl could not make $ETC/agent.crt and agent.key for $name: make them by hand (deploy/agent/make-cert.sh) and run install.sh again"
if [ ! -f "$CONFIG" ]; then
    made_files="$made_files $CONFIG"
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
        ! "$PREFIX/versions/$version/bin/python" -I -c 'import agent.cli' >/dev/null 2>&1; then
    warn "install.sh: the installed $version is damaged (its agent does not import): installing it again"
    stop_agent
    previous=""
fi
if [ "$previous" = "$version" ]; then
    if [ "$token_todo" = fresh ]; then put_token; fi  # the check reads it
    agent_check "$version" || { relay "$work/check.err"; die "relayfleet-agent check fails with $CONFIG: fix it and run install.sh again"; }
    if [ "$token_todo" = rotate ]; then put_token; fi
    if [ "$token_state" = kept ] && running && healthy "$version" 5 quiet; then
        committed=true
        say "relayfleet agent $version is installed and healthy: nothing to do"
        report false "$token_state" false
        exit 0
    fi
    start_agent
    # (a failure: on_exit puts the token it had back and restarts the agent with it)
    healthy "$version" "$HEALTH_WAIT" ||
        die "the agent $version does not run: see $LOG (and relayfleet-agent check --config $CONFIG)"
    committed=true
    say "relayfleet agent $version restarted"
    report true "$token_state" false
    exit 0
fi

# -- a new version: its own virtualenv, from the bundle's wheels only --------------------
venv=$PREFIX/versions/$version
new_venv=$venv
phase=venv
rm -rf "$venv"
"$host_python" -I -m venv --without-pip "$venv" 2> "$work/venv.err" ||
    { relay "$work/venv.err"; die "cannot make a virtualenv with $host_python (Debian/Ubuntu: apt install python3-venv)"; }
"$venv/bin/python" -I "$src/wheels/$pip_wheel/pip" install --quiet --no-index --no-cache-dir \
    --no-warn-script-location --find-links "$src/wheels" --require-hashes \
    -r "$src/requirements/$pyver.txt" 2> "$work/pip.err" ||
    { relay "$work/pip.err"; die "installing the agent's wheels into $venv failed (above)"; }
"$venv/bin/python" -I -m pip check > "$work/pip.err" 2>&1 ||
    { relay "$work/pip.err"; die "the agent's dependencies in $venv do not fit together (pip check)"; }
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

# Back to what ran before; every message goes to the log first, and a failed write to the
# caller's channel (cut) stops nothing here.
undo_changes() {
    trap '' INT TERM
    warn "install.sh: $1"
    stop_agent
    if [ -f "$work/unit.previous" ]; then
        cp "$work/unit.previous" "$UNIT"
        chmod 644 "$UNIT"
    fi
    undo_token
    if [ -n "$previous" ]; then
        switch_to "$previous"
        start_agent
        if agent_check "$previous" && healthy "$previous" "$HEALTH_WAIT"; then
            warn "install.sh: rolled back to $previous"
        else
            warn "install.sh: rolled back to $previous, but it does not answer either: see $LOG"
        fi
    else
        rm -f "$PREFIX/current"
        if [ "$service" = systemd ] && [ ! -f "$work/unit.previous" ]; then
            systemctl disable relayfleet-agent >/dev/null 2>&1 || true
            rm -f "$UNIT"
            systemctl daemon-reload || true
        fi
        warn "install.sh: rolled back: removed $version again (no previous version)"
    fi
    rm -rf "$venv"
    phase=rolled_back
}
rollback() { undo_changes "$1"; report false "$token_state" true; exit 3; }

switch_to "$version"
phase=switched
if [ "$service" = systemd ]; then
    [ -f "$UNIT" ] && cp "$UNIT" "$work/unit.previous"
    install -m 0644 "$src/relayfleet-agent.service" "$UNIT"
fi
if [ "$token_todo" = fresh ]; then put_token; fi  # the check reads it
if ! agent_check "$version"; then
    relay "$work/check.err"
    rollback "relayfleet-agent $version check --config $CONFIG failed"
fi
if [ "$token_todo" = rotate ]; then put_token; fi
start_agent
healthy "$version" "$HEALTH_WAIT" || rollback "the agent $version failed its health check (see $LOG)"
committed=true

# Keep the running version, the one before it and one more.
keep_extra=1
# (newest first: only ls sorts by time; the names are checked versions, without blanks)
# shellcheck disable=SC2045
for dir in $(ls -1t "$PREFIX/versions"); do
    [ "$dir" = "$version" ] || [ "$dir" = "$previous" ] && continue
    if [ $keep_extra -gt 0 ]; then keep_extra=$((keep_extra - 1)); continue; fi
    rm -rf "${PREFIX:?}/versions/$dir"
done

say "relayfleet agent $version installed${previous:+ (was $previous)}; pin its certificate in the controller (agent.tls_fingerprint):"
say "  ${fingerprint:-(no TLS configured in $CONFIG)}"
report true "$token_state" false
