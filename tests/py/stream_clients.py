"""Streaming clients nobody on the project wrote the protocol code of: Python's `websockets`
against the WebSocket route, and grpcio calling IngestStream with messages built from the
descriptors server reflection returns (as grpcurl does). Each sends the same three events
(valid, invalid type, valid) and prints one JSON line per result, tagged with the client;
the Rust test (tests/python_clients.rs) checks them and the stored events.

usage: stream_clients.py HOST:PORT
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from websockets.sync.client import connect

SERVICE = "eventgateway.v1.EventGatewayService"
ADDR = sys.argv[1]


def events(prefix):
    return [
        {"id": f"{prefix}-1", "type": "user.created", "source": "py-stream", "data": {"n": 1}},
        {"id": f"{prefix}-bad", "type": "", "source": "py-stream"},
        {"id": f"{prefix}-2", "type": "user.created", "source": "py-stream", "data": {"n": 2}},
    ]


def report(client, result):
    print(json.dumps({"client": client, "result": result}))


def websocket():
    with connect(f"ws://{ADDR}/api/v1/events/ws") as ws:
        # One event per frame, then the same three as one request frame numbered from 100.
        for e in events("ws"):
            ws.send(json.dumps(e))
        ws.send(json.dumps({"sequence": 100, "events": events("wsreq")}))
        # The library's own keep-alive: a ping the server must answer.
        ws.ping().wait(timeout=5)
        for _ in range(6):
            report("websocket", json.loads(ws.recv(timeout=10)))


def grpc_stream():
    channel = grpc.insecure_channel(ADDR)
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    method = pool.FindServiceByName(SERVICE).FindMethodByName("IngestStream")
    assert method.client_streaming and method.server_streaming
    req_cls = message_factory.GetMessageClass(method.input_type)
    resp_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.stream_stream(
        f"/{SERVICE}/IngestStream",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=resp_cls.FromString,
    )
    requests = [
        json_format.ParseDict({"sequence": i, "events": [e]}, req_cls())
        for i, e in enumerate(events("grpc"))
    ]
    for r in call(iter(requests), timeout=20):
        report("grpc", json_format.MessageToDict(r))


websocket()
grpc_stream()
