#!/usr/bin/env bash
# What the lane consumers cost a NATS server: starts the static nats-server
# (as run-local.sh installs it) with JetStream, provisions a configuration of
# N CRM connections with P partitions each (the bridge's own `provision`),
# and prints the number of consumers and the server's resident memory before
# and after (and after a restart, with the consumers loaded from disk).
# Usage: deploy/consumer-cost.sh [CONNECTIONS=200] [PARTITIONS=4 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
ensure_nats_binary
connections="${1:-200}"
shift || true
partitions=("${@:-4}")
cargo build --quiet
bin=target/debug/softphone-bridge
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for p in "${partitions[@]}"; do
  dir="$(mktemp -d)"
  port=$((20000 + RANDOM % 20000))
  config="$dir/bridge.toml"
  {
    printf '[lanes]\npartitions = %s\n\n' "$p"
    for i in $(seq 1 "$connections"); do
      printf '[crms.c%s]\nkind = "log"\n\n' "$i"
    done
  } >"$config"
  start() {
    "$NATS_BIN" --jetstream --store_dir "$dir/store" --addr 127.0.0.1 --port "$port" >"$dir/nats.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.1; done
  }
  start
  before=$(rss_kib "$pid")
  SOFTPHONE_BRIDGE_NATS__URL="nats://127.0.0.1:$port" "$bin" --config "$config" provision >"$dir/provision.txt"
  consumers=$(grep -c "^consumer " "$dir/provision.txt")
  sleep 2
  after=$(rss_kib "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  : >"$dir/nats.log"
  start
  sleep 2
  restarted=$(rss_kib "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "connections=$connections partitions=$p consumers=$consumers rss_before_kib=$before rss_after_kib=$after rss_restarted_kib=$restarted per_consumer_kib=$(( (after - before) / consumers ))"
  rm -rf "$dir"
done
