#!/usr/bin/env python3
"""deploy/chaos.sh's verdict: compares what the publisher got acknowledged
(publish.py's record) with what reached the CRM (crm.py's record), and reads
the dead letters from NATS and the redeliveries from Prometheus.

Usage: report.py PUBLISHED CRM_RECORD DLQ_BEFORE SECONDS_OF_RUN LIMIT_S [--wait S]
  --wait S   first wait up to S seconds for every published event to reach the CRM
Prints the report; exits 1 when a goal is missed.
Python standard library only.
"""

import json
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime

MONITORING = ["http://127.0.0.1:8222", "http://127.0.0.1:8223", "http://127.0.0.1:8224"]
PROMETHEUS = "http://127.0.0.1:9090"


def lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def streams():
    """Every stream's details with its consumers, from the first node that answers."""
    for base in MONITORING:
        try:
            with urllib.request.urlopen(f"{base}/jsz?streams=true&consumers=true", timeout=3) as r:
                jsz = json.load(r)
        except OSError:
            continue
        return [s for account in jsz.get("account_details", []) for s in account.get("stream_detail", [])]
    return []


def stream_messages(name):
    """The stream's message count, or None when no node answers."""
    return next((s["state"]["messages"] for s in streams() if s["name"] == name), None)


def prometheus(query):
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            result = json.load(r)["data"]["result"]
    except OSError:
        return None
    return sum(float(sample["value"][1]) for sample in result)


def unix(rfc3339):
    """RFC 3339 with nanoseconds (the bridge's publishedAt) to unix seconds."""
    head, _, frac = rfc3339.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0


def main():
    published_path, crm_path = sys.argv[1], sys.argv[2]
    dlq_before, run_seconds, limit = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    wait = float(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "--wait" else 0.0

    published = lines(published_path)
    acked = {p["id"]: p for p in published if p["acked"] is not None}
    deadline = time.time() + wait
    while True:
        calls = [c for c in lines(crm_path) if c["id"] in acked]
        seen = {c["id"] for c in calls}
        if len(seen) >= len(acked) or time.time() >= deadline:
            break
        time.sleep(2)

    first = {}
    by_id = {}
    for c in calls:
        by_id[c["id"]] = by_id.get(c["id"], 0) + 1
        if c["id"] not in first or c["received"] < first[c["id"]]["received"]:
            first[c["id"]] = c
    lost = sorted(set(acked) - seen)
    duplicates = len(calls) - len(seen)
    twice = sum(1 for n in by_id.values() if n > 1)
    wrong_key = sum(1 for c in calls if not (c["idempotency_key"] == c["webhook_id"] == c["id"]))
    bridge_delays = [c["received"] - unix(c["published_at"]) for c in first.values()]
    end_to_end = [c["received"] - acked[c["id"]]["sent"] for c in first.values()]
    publish_waits = [p["acked"] - p["sent"] for p in acked.values()]
    # A call's events must reach the CRM in the order they were published:
    # the order SOFTPHONE_EVENTS stored them in (its sequence). The publisher
    # sends each event without waiting for the one before, and retries one
    # that failed, so a retried event can be stored after the next one: that
    # order is the publisher's, counted apart.
    reordered = 0
    stored_out_of_order = 0
    conversations = {}
    for event_id, c in first.items():
        index = int(event_id.rsplit("-", 1)[1])
        conversations.setdefault(index // 4, []).append((acked[event_id]["seq"], index, c["received"]))
    reversals = []
    for events in conversations.values():
        events.sort()
        if any(a[2] > b[2] for a, b in zip(events, events[1:])):
            reordered += 1
            reversals.append(events)
        if any(a[1] > b[1] for a, b in zip(events, events[1:])):
            stored_out_of_order += 1
    # Each reversed conversation's calls, every one (duplicates too), in the
    # order the CRM received them: which replica sent what, and when.
    for events in reversals[:10]:
        conversation = events[0][1] // 4
        print(f"out of order: conversation {conversation}")
        mine = [c for c in calls if int(c["id"].rsplit("-", 1)[1]) // 4 == conversation]
        for c in sorted(mine, key=lambda c: c["received"]):
            print(f"  {c['received']:.3f} {c['id']} seq {acked[c['id']]['seq']} from {c.get('peer')}")
    # Their event ids, for deploy/cluster/lanes.py (where the copies sit in SOFTPHONE_LANES).
    with open(crm_path.rsplit("/", 1)[0] + "/reversed-ids.txt", "w", encoding="utf-8") as f:
        f.write(" ".join(c["id"] for events in reversals[:10] for c in calls
                         if int(c["id"].rsplit("-", 1)[1]) // 4 == events[0][1] // 4))
    # One more scrape after the last redelivery, so Prometheus has the counters.
    time.sleep(5)
    dlq_now = stream_messages("SOFTPHONE_DLQ")
    dead = None if dlq_now is None else dlq_now - dlq_before
    window = int(run_seconds) + 60
    redelivered = prometheus(f"sum(increase(softphone_bridge_redeliveries_total[{window}s]))")

    slowest = max(bridge_delays, default=0.0)
    goals = {
        "0 lost": not lost,
        "0 dead-lettered": dead == 0,
        "duplicates carry the same idempotency key": wrong_key == 0,
        f"no event waits longer than {limit:.0f} s (ack wait + one CRM call)": slowest <= limit,
        "every conversation's events reached the CRM in publish order": reordered == 0,
    }
    print(f"events published (acknowledged by SOFTPHONE_EVENTS): {len(acked)} of {len(published)} sent"
          f" (publish retries: {sum(p['attempts'] - 1 for p in published)};"
          f" longest wait for an ack: {max(publish_waits, default=0):.1f} s)")
    print(f"events handled (distinct event ids at the CRM):       {len(seen)}")
    print(f"lost (acknowledged, never at the CRM):                {len(lost)}"
          + (f"  e.g. {lost[:5]}" if lost else ""))
    print(f"dead-lettered (new in SOFTPHONE_DLQ):                 {dead if dead is not None else 'unknown'}")
    print(f"redelivered (sum of softphone_bridge_redeliveries_total increases, a lower bound:"
          f" a killed replica's counts since its last scrape are gone): "
          f"{'unknown' if redelivered is None else round(redelivered)}")
    print(f"CRM calls: {len(calls)}; duplicate calls: {duplicates} (events called more than once: {twice});"
          f" calls whose Idempotency-Key or webhook-id is not the event id: {wrong_key}")
    in_order = 100.0 * (len(conversations) - reordered) / max(len(conversations), 1)
    print(f"conversations whose events reached the CRM in publish order: {in_order:.1f} %"
          f" ({reordered} of {len(conversations)} out of order; the order SOFTPHONE_EVENTS stored them in,"
          f" which differs from the publisher's own in {stored_out_of_order})")
    print(f"delay, stored in SOFTPHONE_EVENTS -> first CRM receipt: p50 {percentile(bridge_delays, 50):.3f} s,"
          f" p99 {percentile(bridge_delays, 99):.3f} s, max {slowest:.3f} s")
    print(f"delay, first publish attempt -> first CRM receipt:      p50 {percentile(end_to_end, 50):.3f} s,"
          f" p99 {percentile(end_to_end, 99):.3f} s, max {max(end_to_end, default=0):.3f} s")
    # Where events still wait, if any: not yet delivered, or delivered and not acknowledged.
    for stream in streams():
        for consumer in stream.get("consumer_detail", []):
            print(f"consumer {consumer['name']}: pending {consumer['num_pending']},"
                  f" unacknowledged {consumer['num_ack_pending']}")
    for goal, met in goals.items():
        print(f"goal {'met   ' if met else 'MISSED'}: {goal}")
    sys.exit(0 if all(goals.values()) else 1)


if __name__ == "__main__":
    main()
