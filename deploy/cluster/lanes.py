#!/usr/bin/env python3
"""Where a reversed conversation's copies sit in SOFTPHONE_LANES: for each
event id given, every copy the intake stored (lane-stream sequence, subject,
time stored), in stream order. Tells whether the intake stored a
conversation's copies out of order or a lane sent them out of order.

Needs nats-py (deploy/chaos.sh's venv). Usage: lanes.py SERVERS EVENT_ID...
"""

import asyncio
import os
import ssl
import sys

import nats

EVENT_ID = "Softphone-Event-Id"


async def main():
    servers, wanted = sys.argv[1].split(","), set(sys.argv[2:])
    tls = ssl.create_default_context(cafile=os.environ["NATS_CA"]) if os.environ.get("NATS_CA") else None
    nc = await nats.connect(servers=servers, tls=tls, connect_timeout=2)
    js = nc.jetstream()
    last = (await js.stream_info("SOFTPHONE_LANES")).state.last_seq
    found = []
    sub = await js.subscribe("softphone.lane.>", stream="SOFTPHONE_LANES", ordered_consumer=True,
                             deliver_policy=nats.js.api.DeliverPolicy.ALL)
    while True:
        msg = await sub.next_msg(timeout=10)
        meta = msg.metadata
        if (msg.headers or {}).get(EVENT_ID) in wanted:
            found.append((meta.sequence.stream, msg.subject, msg.headers[EVENT_ID], meta.timestamp))
        if meta.sequence.stream >= last:
            break
    await nc.close()
    for seq, subject, event_id, stored in sorted(found):
        print(f"  lane seq {seq} {event_id} on {subject} stored {stored}")


if __name__ == "__main__":
    asyncio.run(main())
