#!/usr/bin/env bash
# What one replica's /readyz and /metrics cost NATS and take, with N CRM
# connections and R replicas: starts the static nats-server (as run-local.sh
# installs it) with JetStream and its monitoring port, provisions N
# connections with the default partitions (the bridge's own `provision`),
# starts R replicas of the bridge with an ops listener each, waits until
# every one is ready and the units are shared out, then asks each replica
# for /readyz and /metrics K times in turn and prints, per probe, the
# JetStream API requests the server counted and the mean answer time.
# Usage: deploy/probe-cost.sh [CONNECTIONS=200] [REPLICAS=3] [K=20] [BIN=target/debug/softphone-bridge]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
ensure_nats_binary
connections="${1:-200}"
replicas="${2:-3}"
rounds="${3:-20}"
bin="${4:-target/debug/softphone-bridge}"
[ -x "$bin" ] || cargo build --quiet

dir="$(mktemp -d)"
base=$((21000 + RANDOM % 10000))
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$NATS_BIN" -js -sd "$dir/store" -a 127.0.0.1 -p "$base" -m $((base + 1)) >"$dir/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "Server is ready" "$dir/nats.log" && break; sleep 0.2; done
api_total() { curl -s "http://127.0.0.1:$((base + 1))/jsz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api"]["total"])'; }

{
  printf '[worker]\nconcurrency = 4\n\n'
  for n in $(seq 1 "$connections"); do printf '[crms.c%s]\nkind = "log"\n\n' "$n"; done
} >"$dir/bridge.toml"
export SOFTPHONE_BRIDGE_NATS__URL="nats://127.0.0.1:$base" SOFTPHONE_BRIDGE_NATS__REQUEST_TIMEOUT=30s
"$bin" --config "$dir/bridge.toml" provision >"$dir/provision.txt"
consumers=$(grep -c "^consumer " "$dir/provision.txt")
for r in $(seq 1 "$replicas"); do
  SOFTPHONE_BRIDGE_HTTP__OPS_LISTEN="127.0.0.1:$((base + 10 + r))" SOFTPHONE_BRIDGE_STREAMS__PROVISION_ON_START=false \
    "$bin" --config "$dir/bridge.toml" run >"$dir/bridge$r.log" 2>&1 &
  pids+=($!)
done
ready() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 10 + $1))/readyz"; }
for r in $(seq 1 "$replicas"); do
  for _ in $(seq 1 300); do [ "$(ready "$r")" = 200 ] && break; sleep 0.2; done
done
# Until the units are shared out: a quarter of the lease after the last join.
sleep 8
for probe in readyz metrics; do
  before=$(api_total)
  start=$(date +%s%N)
  for _ in $(seq 1 "$rounds"); do
    for r in $(seq 1 "$replicas"); do
      curl -s -o /dev/null "http://127.0.0.1:$((base + 10 + r))/$probe"
    done
  done
  took=$(( ($(date +%s%N) - start) / 1000000 ))
  after=$(api_total)
  probes=$((rounds * replicas))
  echo "connections=$connections consumers=$consumers replicas=$replicas /$probe:" \
    "jetstream_api_requests_per_probe=$(( (after - before) / probes ))" \
    "mean_ms=$(awk -v t="$took" -v n="$probes" 'BEGIN {printf "%.1f", t / n}')"
done
