"""A reflection-driven gRPC client, as grpcurl is: it knows nothing of the contract in
advance. It lists services over server reflection, loads the descriptors the server
publishes, and calls all three RPCs with JSON turned into messages by those descriptors.

usage: reflection_client.py HOST:PORT
Prints one JSON object per call; exits non-zero on any unexpected outcome.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "eventgateway.v1.EventGatewayService"
SEED = {
    "type": "user.created",
    "source": "user-service",
    "subject": "user-123",
    "data": {"user_id": "123", "email": "user@example.com"},
}


def main(target: str) -> int:
    channel = grpc.insecure_channel(target)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    print(json.dumps({"services": sorted(services)}))
    assert SERVICE in services, services
    assert "grpc.health.v1.Health" in services, services

    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(SERVICE)

    def call(method_name: str, request_json: dict):
        method = svc.FindMethodByName(method_name)
        req_cls = message_factory.GetMessageClass(method.input_type)
        resp_cls = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(request_json, req_cls())
        rpc = channel.unary_unary(
            f"/{SERVICE}/{method_name}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=resp_cls.FromString,
        )
        return json_format.MessageToDict(rpc(request))

    ingest = call("IngestEvent", {"event": SEED})
    print(json.dumps({"IngestEvent": ingest}))
    assert ingest["id"], ingest

    batch = call("IngestBatch", {"events": [SEED, dict(SEED, subject="user-456")]})
    print(json.dumps({"IngestBatch": batch}))
    assert batch["storedCount"] == 2, batch

    valid = call("Validate", {"event": SEED})
    print(json.dumps({"Validate": valid}))
    assert valid["valid"] is True, valid

    try:
        call("IngestEvent", {"event": {"type": "", "source": "s"}})
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        assert "event.type" in e.details(), e.details()
        print(json.dumps({"invalid": e.details()}))
    else:
        raise AssertionError("an invalid event was accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
