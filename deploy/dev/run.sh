#!/usr/bin/env bash
# Set up this machine and run the controller with embedded defaults: SQLite in
# ~/.local/share/relayfleet, a local Redis (started here if none answers on 6379), a
# Celery worker and beat, and the API on 127.0.0.1:8080. Then it runs the seed story on
# six lab hosts with the relayfleet CLI (tests/lab/fleet_demo.py) and keeps serving until
# Ctrl-C.
# `bash deploy/dev/run.sh --no-demo` only serves; `--relay-demo` runs the relay-grade
# story (STARTTLS, AUTH, masquerade, fix_hostname) instead of the seed story.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/dev/bootstrap.sh
export RELAYFLEET_DATA_DIR=${RELAYFLEET_DATA_DIR:-$HOME/.local/share/relayfleet}
export RELAYFLEET_BROKER_URL=${RELAYFLEET_BROKER_URL:-redis://127.0.0.1:6379/0}
# Where the worker may send agent calls and callbacks: the demo's lab hosts live on
# 10.N.0.0/24 bridges, and a callback receiver you try out may be on this machine.
export RELAYFLEET_EGRESS_ALLOW=${RELAYFLEET_EGRESS_ALLOW:-loopback,10.0.0.0/8}
mkdir -p "$RELAYFLEET_DATA_DIR"
bin=.venv/bin
if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    echo "run: starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir "$RELAYFLEET_DATA_DIR" --logfile "$RELAYFLEET_DATA_DIR/redis.log"
    for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
$bin/relayfleet-controller init-db
token_file="$RELAYFLEET_DATA_DIR/admin.token"
if [ ! -s "$token_file" ]; then
    (umask 077; $bin/relayfleet-controller token create --role admin --name "dev admin" \
        | tail -1 > "$token_file")
fi
token=$(cat "$token_file")
logs="$RELAYFLEET_DATA_DIR/logs"; mkdir -p "$logs"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
$bin/relayfleet-controller worker >"$logs/worker.log" 2>&1 & pids+=($!)
$bin/relayfleet-controller beat >"$logs/beat.log" 2>&1 & pids+=($!)
$bin/relayfleet-controller serve --listen 127.0.0.1:8080 >"$logs/api.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/v1/health >/dev/null && break; sleep 0.2; done
cat <<MSG
relayfleet controller on http://127.0.0.1:8080 (logs in $logs)
admin token (also in $token_file):
  $token
try the CLI:
  export RELAYFLEET_API_URL=http://127.0.0.1:8080 RELAYFLEET_TOKEN=\$(cat $token_file)
  $PWD/$bin/relayfleet fleet        # or: $PWD/$bin/relayfleet --help
or the API:  curl -H "Authorization: Bearer \$(cat $token_file)" http://127.0.0.1:8080/v1/fleet
docs: http://127.0.0.1:8080/docs (same header)
console: http://127.0.0.1:8080/ui/ (sign in with the token above)

MSG
case "${1:-}" in
    --no-demo) ;;
    --relay-demo)
        $bin/python -m tests.lab.relay_demo --api http://127.0.0.1:8080 --token "$token" || true ;;
    *)
        $bin/python -m tests.lab.fleet_demo --api http://127.0.0.1:8080 --token "$token" || true ;;
esac
echo "serving; Ctrl-C stops the API, worker and beat"
wait
