#!/usr/bin/env python3
"""The CRM of the local cluster (deploy/cluster.sh): a webhook receiver that
answers 200 to every POST and records it, so deploy/chaos.sh can count what
reached the CRM, how often and how late.

Each request becomes one JSON line in the record file:
  {"received": <unix seconds>, "id": <body's event id>, "event": ...,
   "published_at": <body's publishedAt>, "sequence": <body's sequence>,
   "idempotency_key": ..., "webhook_id": ..., "peer": <the sending replica's address>}

It does not verify signatures (the bridge's tests do): it stands for a CRM that
is always up, so that every duplicate or delay it records is the pipeline's.
Python standard library only.  Usage: crm.py HOST PORT RECORD_FILE
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    # Keep-alive: the bridge pools its connections.
    protocol_version = "HTTP/1.1"
    record = None
    lock = threading.Lock()

    def do_POST(self):
        received = time.time()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        line = json.dumps(
            {
                "received": received,
                "id": event.get("id"),
                "event": event.get("event"),
                "published_at": event.get("publishedAt"),
                "sequence": event.get("sequence"),
                "idempotency_key": self.headers.get("Idempotency-Key"),
                "webhook_id": self.headers.get("webhook-id"),
                # Which replica sent it: each container has its own address.
                "peer": self.client_address[0],
            }
        )
        with self.lock:
            self.record.write(line + "\n")
            self.record.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        # A liveness answer for deploy/cluster.sh.
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Receiver.record = open(path, "a", encoding="utf-8")
    server = ThreadingHTTPServer((host, port), Receiver)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
