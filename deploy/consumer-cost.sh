#!/usr/bin/env bash
# What the lane consumers cost NATS: starts the static nats-server (as
# run-local.sh installs it) with JetStream, one node or NODES=3 clustered on
# loopback (then streams.replicas = 3), provisions N CRM connections with P
# partitions each (the bridge's own `provision`), and prints the consumers,
# the resident memory each node gained, the idle CPU of the nodes over 10 s
# and how long provisioning took.
# Usage: [NODES=1|3] deploy/consumer-cost.sh [CONNECTIONS=200] [PARTITIONS=4 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
ensure_nats_binary
nodes="${NODES:-1}"
connections="${1:-200}"
shift || true
partitions=("${@:-4}")
cargo build --quiet
bin=target/debug/softphone-bridge

run() {
  local p=$1 dir base routes pids=() n
  dir="$(mktemp -d)"
  base=$((21000 + RANDOM % 10000))
  routes=""
  for n in $(seq 0 $((nodes - 1))); do routes+="nats-route://127.0.0.1:$((base + 10 + n)),"; done
  for n in $(seq 0 $((nodes - 1))); do
    {
      echo "server_name: n$n"
      echo "listen: 127.0.0.1:$((base + n))"
      echo "jetstream { store_dir: \"$dir/store$n\" }"
      if [ "$nodes" -gt 1 ]; then
        echo "cluster { name: c, listen: 127.0.0.1:$((base + 10 + n)), routes: [${routes%,}] }"
      fi
    } >"$dir/n$n.conf"
    "$NATS_BIN" -c "$dir/n$n.conf" >"$dir/n$n.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do grep -q "Server is ready" "$dir/n0.log" && break; sleep 0.2; done
  sleep 3
  rss() { local t=0 pid; for pid in "${pids[@]}"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))); done; echo "$t"; }
  cpu() { local t=0 pid; for pid in "${pids[@]}"; do t=$((t + $(awk '{print $14+$15}' "/proc/$pid/stat"))); done; echo "$t"; }
  local before after c0 c1 start took consumers
  before=$(rss)
  {
    printf '[streams]\nreplicas = %s\n[lanes]\npartitions = %s\n\n' "$nodes" "$p"
    for n in $(seq 1 "$connections"); do printf '[crms.c%s]\nkind = "log"\n\n' "$n"; done
  } >"$dir/bridge.toml"
  start=$(date +%s)
  SOFTPHONE_BRIDGE_NATS__URL="nats://127.0.0.1:$base" SOFTPHONE_BRIDGE_NATS__REQUEST_TIMEOUT=30s \
    "$bin" --config "$dir/bridge.toml" provision >"$dir/provision.txt"
  took=$(($(date +%s) - start))
  consumers=$(grep -c "^consumer " "$dir/provision.txt")
  sleep 10
  after=$(rss)
  c0=$(cpu); sleep 10; c1=$(cpu)
  echo "nodes=$nodes partitions=$p connections=$connections(+[crm]) consumers=$consumers provision_s=$took" \
    "rss_added_per_node_kib=$(((after - before) / nodes)) per_consumer_kib=$(((after - before) / nodes / consumers))" \
    "idle_cpu_cores=$(awk -v t=$((c1 - c0)) 'BEGIN {printf "%.2f", t / 1000}')"
  for n in "${pids[@]}"; do kill "$n"; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}

for p in "${partitions[@]}"; do run "$p"; done
