#!/usr/bin/env bash
# Set up this machine and run the seed story on two lab hosts (Debian and CentOS layout):
# voicemail deferred -> smarthost set -> queue flushed -> delivered, printed as it happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash deploy/dev/bootstrap.sh
exec .venv/bin/python -m tests.lab.demo "$@"
