"""scripts/bench/instructions' gRPC client that behaves like grpcio and grpc-java: it
advertises gzip (grpcio's default). Sends N IngestEvent calls one after another and prints
how many succeeded. Usage: python grpc_gzip_client.py PORT N"""
import sys

import grpc


def field(number, payload):
    """One length-delimited protobuf field: enough to build IngestEventRequest by hand."""
    out, n = bytearray([(number << 3) | 2]), len(payload)
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


port, n = sys.argv[1], int(sys.argv[2])
call = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary(
    "/eventgateway.v1.EventGatewayService/IngestEvent")
ok = 0
for i in range(n):
    # CloudEvent: id 1, source 2, specversion 3, type 4; IngestEventRequest: event 1.
    event = field(1, f"id-{i}".encode()) + field(2, b"bench") + field(3, b"1.0") + field(4, b"user.created")
    call(field(1, event))
    ok += 1
print(ok)
