#!/usr/bin/env bash
# A local softphone-bridge cluster in one command (docs/cluster.md):
#
#   bash deploy/cluster.sh up       # build what is missing, start, wait until ready
#   bash deploy/cluster.sh status   # containers, health, the events stream's leader
#   bash deploy/cluster.sh down     # stop and remove everything, data included
#
# Three NATS servers with JetStream as one cluster (deploy/cluster/nats.conf;
# TLS on the client listener and a wss:// WebSocket listener, certificates
# made locally by openssl into target/cluster/tls),
# a one-shot `softphone-bridge provision` (R3 streams and consumers), three
# bridge replicas and Prometheus, with Docker Compose (`docker compose`, or
# Debian's docker-compose 1.29); and the CRM, deploy/cluster/crm.py, on the
# host, recording every webhook call in target/cluster/crm.jsonl.
# Every image is built offline (deploy/offline-image.sh): no registry needed.
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/nats-env.sh
source deploy/offline-image.sh

STATE_DIR="target/cluster"
CRM_PORT="${CRM_PORT:-8099}"
CRM_RECORD="$STATE_DIR/crm.jsonl"
CRM_PID="$STATE_DIR/crm.pid"
COMPOSE_FILE="deploy/cluster/compose.yml"
PROJECT="softphone-cluster"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
export SOFTPHONE_BRIDGE_IMAGE="${SOFTPHONE_BRIDGE_IMAGE:-softphone-bridge:${version}}"
export SOFTPHONE_PROMETHEUS_IMAGE="${SOFTPHONE_PROMETHEUS_IMAGE:-softphone-bridge/prometheus:local}"
BRIDGES=(bridge1 bridge2 bridge3)

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
  else
    docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"
  fi
}

# Prometheus from Debian's package, in an image built the same offline way.
prometheus_image() {
  docker image inspect "$SOFTPHONE_PROMETHEUS_IMAGE" >/dev/null 2>&1 && return 0
  if [ ! -x /usr/bin/prometheus ]; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends prometheus >/dev/null
  fi
  build_offline_image "$SOFTPHONE_PROMETHEUS_IMAGE" deploy/prometheus/Dockerfile \
    "/usr/bin/prometheus:/bin/prometheus"
  echo "built $SOFTPHONE_PROMETHEUS_IMAGE from $(/usr/bin/prometheus --version 2>&1 | head -n 1)"
}

# The containers reach the host as host.docker.internal (host-gateway): the
# default bridge's gateway address. The CRM listens there only, not on every
# interface of the host.
gateway_address() {
  local bridge
  bridge="$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}')"
  # `ip -o` prints "5: docker0    inet 172.17.0.1/16 brd ...".
  ip -4 -o addr show dev "${bridge:-docker0}" | awk '{ split($4, a, "/"); print a[1]; exit }'
}

crm_running() {
  [ -f "$CRM_PID" ] && kill -0 "$(cat "$CRM_PID")" 2>/dev/null
}

start_crm() {
  crm_running && return 0
  local address
  address="$(gateway_address)"
  nohup python3 deploy/cluster/crm.py "$address" "$CRM_PORT" "$CRM_RECORD" \
    >"$STATE_DIR/crm.log" 2>&1 &
  echo $! >"$CRM_PID"
  # Answering GET means it is listening.
  for _ in $(seq 50); do
    curl -fsS -o /dev/null "http://$address:$CRM_PORT/" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the CRM receiver did not start: $(cat "$STATE_DIR/crm.log")" >&2
  return 1
}

stop_crm() {
  if crm_running; then
    kill "$(cat "$CRM_PID")"
  fi
  rm -f "$CRM_PID"
}

# Waits until every replica's health check (`softphone-bridge health`:
# /readyz) passes.
wait_ready() {
  local deadline=$((SECONDS + 180)) bridge id status
  for bridge in "${BRIDGES[@]}"; do
    while true; do
      id="$(compose ps -q "$bridge")"
      status="$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo starting)"
      [ "$status" = healthy ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "$bridge is not ready ($status); its log:" >&2
        compose logs --tail 20 "$bridge" >&2
        return 1
      fi
      sleep 2
    done
  done
}

# The node that leads SOFTPHONE_EVENTS, from any node's monitoring endpoint.
events_leader() {
  local port jsz
  for port in 8222 8223 8224; do
    jsz="$(curl -fsS "http://127.0.0.1:$port/jsz?streams=true" 2>/dev/null)" || continue
    python3 -c '
import json, sys
for account in json.load(sys.stdin).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream["name"] == "SOFTPHONE_EVENTS" and stream.get("cluster", {}).get("leader"):
            print(stream["cluster"]["leader"]); sys.exit(0)
sys.exit(1)' <<<"$jsz" && return 0
  done
  return 1
}

up() {
  mkdir -p "$STATE_DIR"
  # TLS on the client and WebSocket listeners: a local CA and a certificate.
  ensure_local_certs "$STATE_DIR/tls" nats1 nats2 nats3 localhost 127.0.0.1
  bash deploy/nats-image.sh
  bash deploy/image.sh
  prometheus_image
  start_crm
  compose up -d
  wait_ready
  cat <<EOF
cluster ready:
  NATS          tls://127.0.0.1:4222 (also :4223, :4224), trusting $STATE_DIR/tls/ca.pem
  WebSocket     wss://127.0.0.1:8443 (also :8444, :8445); monitoring http://127.0.0.1:8222
  events leader $(events_leader || echo "unknown")
  Prometheus    http://127.0.0.1:9090 (alerts: deploy/prometheus/alerts.yml)
  CRM record    $CRM_RECORD (one JSON line per webhook call)
try: SOFTPHONE_BRIDGE_NATS__URL=tls://127.0.0.1:4222 SOFTPHONE_BRIDGE_NATS__TLS__CA_FILE=$STATE_DIR/tls/ca.pem softphone-bridge emit call.accepted '{...}'
EOF
}

case "${1:-}" in
  up) up ;;
  down)
    compose down --volumes --remove-orphans
    stop_crm
    ;;
  status)
    compose ps
    echo "events stream leader: $(events_leader || echo unknown)"
    if crm_running; then echo "CRM receiver: running"; else echo "CRM receiver: stopped"; fi
    ;;
  leader) events_leader ;;
  compose)
    shift
    compose "$@"
    ;;
  *)
    echo "usage: $0 up|down|status|leader|compose ARGS..." >&2
    exit 2
    ;;
esac
