#!/usr/bin/env python3
"""A steady softphone for deploy/chaos.sh: publishes call lifecycles
(incoming, accepted, ended, notes_submitted) at RATE events/s for SECONDS
seconds to SOFTPHONE_EVENTS, as a softphone would: each event with a unique
Nats-Msg-Id (the bridge's event id), retried with the same id until the stream
acknowledges it (the stream drops a repeat inside its duplicate window), so
a NATS node going away loses nothing on the publishing side.

Writes one JSON line per event to OUT:
  {"id", "subject", "sent": first attempt (unix s), "acked": ack time or null,
   "attempts", "seq"}
Needs nats-py (deploy/chaos.sh installs it into a venv).
Usage: publish.py SERVERS RATE SECONDS OUT   (SERVERS comma separated)
"""

import asyncio
import json
import os
import ssl
import sys
import time
import uuid

import nats
from nats.errors import Error as NatsError

PARTNER = "215fd887-39be-4935-981f-2670d6afeaa7"
LIFECYCLE = [
    ("softphone.call.incoming", {"callerANI": "+18883973342"}),
    ("softphone.call.accepted", {"callerANI": "+18883973342", "recordingStatus": "ON"}),
    ("softphone.call.ended", {"duration": 42, "disposition": "Resolved", "callType": "inbound"}),
    ("softphone.call.notes_submitted", {"disposition": "Resolved", "notes": "chaos run"}),
]
# How long one event may be retried before it counts as not published.
GIVE_UP_AFTER = 90.0
# Outstanding publishes at most (bounded memory while a stream has no leader).
MAX_OUTSTANDING = 20000


async def main():
    servers, rate, seconds, out = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    run = uuid.uuid4().hex[:8]
    # The cluster's client listener speaks TLS only (deploy/cluster/nats.conf).
    tls = ssl.create_default_context(cafile=os.environ["NATS_CA"]) if os.environ.get("NATS_CA") else None
    nc = await nats.connect(
        servers=servers,
        tls=tls,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        name="chaos-publisher",
    )
    # As long as the bridge waits for a publish ack (nats.request_timeout).
    js = nc.jetstream(timeout=5)
    record = open(out, "w", encoding="utf-8")
    outstanding = asyncio.Semaphore(MAX_OUTSTANDING)
    tasks = set()
    conversation = None

    async def publish(i, subject, body):
        msg_id = f"chaos-{run}-{i}"
        sent = time.time()
        attempts = 0
        acked, seq = None, None
        try:
            while time.time() - sent < GIVE_UP_AFTER:
                attempts += 1
                try:
                    ack = await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
                    acked, seq = time.time(), ack.seq
                    break
                except (NatsError, asyncio.TimeoutError):
                    # No leader yet, a node gone, a timeout: the same id again.
                    await asyncio.sleep(0.2)
            record.write(json.dumps({"id": msg_id, "subject": subject, "sent": sent,
                                     "acked": acked, "attempts": attempts, "seq": seq}) + "\n")
        finally:
            outstanding.release()

    total = int(rate * seconds)
    start = time.monotonic()
    for i in range(total):
        # Steady: event i leaves at start + i/rate, however long acks take.
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        subject, fields = LIFECYCLE[i % len(LIFECYCLE)]
        if i % len(LIFECYCLE) == 0:
            conversation = str(uuid.uuid4())
        body = json.dumps({"partnerId": PARTNER, "conversationId": conversation, **fields}).encode()
        await outstanding.acquire()
        task = asyncio.create_task(publish(i, subject, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if i % int(rate * 10) == 0:
            print(f"publisher: {i} events sent, {len(tasks)} awaiting their ack", file=sys.stderr, flush=True)
    await asyncio.gather(*tasks)
    record.close()
    await nc.drain()
    print(f"publisher: {total} events in {time.monotonic() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
