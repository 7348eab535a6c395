#!/usr/bin/env bash
# Proof under faults (docs/cluster.md, "Proof under faults"), against the cluster of
# `bash deploy/cluster.sh up`:
#   - a steady RATE events/s (500) for DURATION seconds (120) from the host
#     (deploy/cluster/publish.py, nats-py in a venv under target/cluster);
#   - SIGKILL to a random bridge replica's process every 10 s (restart: always
#     brings it back);
#   - at 30 s the NATS node leading SOFTPHONE_EVENTS is stopped, at 60 s started;
#   - at 80 s another NATS node is restarted;
# then waits for every published event to reach the CRM (up to DRAIN seconds)
# and reports (deploy/cluster/report.py; also in target/cluster/chaos-report.txt):
# published, handled, lost, dead-lettered, redelivered, duplicate CRM calls,
# the fraction of conversations whose events reached the CRM in publish order,
# the longest delay. Exits 1 when a goal is missed. Too long for CI.
# FAULTS=0 runs the same load without faults (a baseline for the delays).
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-500}"
DURATION="${DURATION:-120}"
DRAIN="${DRAIN:-300}"
# worker.ack_wait (30s: a killed replica's events in flight come back; its
# partitions move within it, after lanes.lease, and every other conversation
# goes on then) + crm.timeout (10s), the defaults the cluster runs with.
LIMIT="${LIMIT:-40}"
STATE_DIR="target/cluster"
NATS_URLS="tls://127.0.0.1:4222,tls://127.0.0.1:4223,tls://127.0.0.1:4224"
# The cluster's client listener speaks TLS only; publish.py trusts its local CA.
export NATS_CA="$STATE_DIR/tls/ca.pem"
cluster() { bash deploy/cluster.sh "$@"; }
log() { echo "chaos $(date -u +%T) (+$((SECONDS - started))s): $*"; }

leader="$(cluster leader)" || {
  echo "no cluster answers: run 'bash deploy/cluster.sh up' first" >&2
  exit 1
}

# The publisher's client library, apart from the system's Python.
venv="$STATE_DIR/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "nats-py==2.16.0"
fi

# Container ids, looked up once: a container keeps its id when it restarts,
# and Compose takes a second or so to answer, which would skew the schedule.
declare -A ids
for service in nats1 nats2 nats3 bridge1 bridge2 bridge3; do
  ids[$service]="$(cluster compose ps -q "$service")"
done
container() { echo "${ids[$1]}"; }

dlq_before="$(python3 -c 'import sys; sys.path.insert(0, "deploy/cluster"); import report; print(report.stream_messages("SOFTPHONE_DLQ") or 0)')"
started=$SECONDS
log "publishing $RATE events/s for $DURATION s; SOFTPHONE_EVENTS is led by $leader"
"$venv/bin/python" deploy/cluster/publish.py "$NATS_URLS" "$RATE" "$DURATION" \
  "$STATE_DIR/published.jsonl" &
publisher=$!

# The faults, on a schedule measured from the start of publishing.
at() { local wait=$((started + $1 - SECONDS)); [ "$wait" -le 0 ] || sleep "$wait"; }
bridges=(bridge1 bridge2 bridge3)
# SIGKILL to the replica's process from the host, as a crash would: Docker
# takes `docker kill` for an operator's stop and does not restart the
# container, whereas a process that dies is restarted (restart: always).
crash() {
  local pid
  pid="$(docker inspect -f '{{.State.Pid}}' "$(container "$1")")"
  if [ "$pid" -gt 0 ]; then
    kill -KILL "$pid"
    log "killed $1 (SIGKILL to pid $pid)"
  else
    log "$1 is still restarting; not killed this time"
  fi
}
stopped=""
for t in $(seq 10 10 "$DURATION"); do
  at "$t"
  # FAULTS=0: the same load and report without faults, as a baseline.
  [ "${FAULTS:-1}" = 1 ] || continue
  victim="${bridges[RANDOM % 3]}"
  crash "$victim"
  case "$t" in
    30)
      stopped="$(cluster leader)"
      docker stop "$(container "$stopped")" >/dev/null
      log "stopped $stopped, the leader of SOFTPHONE_EVENTS"
      ;;
    60)
      docker start "$(container "$stopped")" >/dev/null
      log "started $stopped; SOFTPHONE_EVENTS now led by $(cluster leader || echo '?')"
      ;;
    80)
      # The events stream's current leader if that is another node, else any other.
      other="$(cluster leader || true)"
      if [ -z "$other" ] || [ "$other" = "$stopped" ]; then
        for other in nats1 nats2 nats3; do [ "$other" != "$stopped" ] && break; done
      fi
      docker restart "$(container "$other")" >/dev/null
      log "restarted $other"
      ;;
  esac
done
wait "$publisher"
log "publishing done; waiting up to $DRAIN s for every event to reach the CRM"

set +e
python3 deploy/cluster/report.py "$STATE_DIR/published.jsonl" "$STATE_DIR/crm.jsonl" \
  "$dlq_before" "$((SECONDS - started))" "$LIMIT" --wait "$DRAIN" | tee "$STATE_DIR/chaos-report.txt"
verdict=${PIPESTATUS[0]}
set -e
if [ -s "$STATE_DIR/reversed-ids.txt" ]; then
  echo "where the reversed conversations' copies sit in SOFTPHONE_LANES:" | tee -a "$STATE_DIR/chaos-report.txt"
  # shellcheck disable=SC2046
  "$venv/bin/python" deploy/cluster/lanes.py "$NATS_URLS" $(tr ' ' '\n' <"$STATE_DIR/reversed-ids.txt" | sort -u) \
    | tee -a "$STATE_DIR/chaos-report.txt" || true
fi
cluster compose logs --no-color bridge1 bridge2 bridge3 >"$STATE_DIR/chaos-bridges.log" 2>&1 || true
log "bridge logs: $STATE_DIR/chaos-bridges.log"
exit "$verdict"
