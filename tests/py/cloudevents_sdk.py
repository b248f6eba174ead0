"""Sends events the way the CloudEvents Python SDK (PyPI `cloudevents`) encodes them for HTTP:
binary mode, structured mode, and a batch of structured events. Prints one JSON line per
request with the status and the reply; the Rust test (tests/python_clients.rs) reads them."""
import json
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone

from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

ADDR = sys.argv[1]


def post(path, headers, body):
    req = urllib.request.Request(f"http://{ADDR}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def event(event_id, data=None):
    return CloudEvent(
        {
            "id": event_id,
            "type": "user.created",
            "source": "https://example.com/sdk",
            "subject": "user 1",
            "time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            "datacontenttype": "application/json",
            "partitionkey": "k-1",
        },
        data if data is not None else {"user_id": "1", "email": "a@example.com"},
    )


def report(name, status, reply):
    print(json.dumps({"case": name, "status": status, "reply": reply}))


msg = to_binary_event(event("sdk-binary"))
report("binary", *post("/api/v1/events", dict(msg.headers), msg.body))

msg = to_structured_event(event("sdk-structured"))
report("structured", *post("/api/v1/events", dict(msg.headers), msg.body))

fmt = JSONFormat()
batch = b"[" + b",".join(fmt.write(event(f"sdk-batch-{i}")) for i in range(2)) + b"]"
report(
    "batch",
    *post("/api/v1/events/batch", {"content-type": "application/cloudevents-batch+json"}, batch),
)

# The SDK refuses to build an event without a type, so the header is taken out afterwards.
msg = to_binary_event(event("sdk-no-type"))
headers = {k: v for k, v in dict(msg.headers).items() if k.lower() != "ce-type"}
report("binary-without-type", *post("/api/v1/events", headers, msg.body))
