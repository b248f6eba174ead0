"""The hostile-input run (#14) against the release binary with the repo's config.yaml (the
local log): the probes the issue lists, each bounded in count and time, loopback only.
Prints one line per probe (outcome, peak RSS), then the state afterwards. Run it through
scripts/hostile/run, which builds the binary. Usage: python probe.py BIN REPO_DIR"""
import concurrent.futures as cf
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc

BIN, REPO = sys.argv[1], sys.argv[2]
port = None
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
data = tempfile.mkdtemp()
env = dict(os.environ, GATEWAY_SERVER_ADDRESS=f"127.0.0.1:{port}",
           GATEWAY_STORAGE_DATA_DIR=data + "/data", GATEWAY_LOGGING_LEVEL="error")
proc = subprocess.Popen([BIN, "--config", f"{REPO}/config.yaml"], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rss():
    with open(f"/proc/{proc.pid}/status") as f:
        d = dict(l.split(":", 1) for l in f if ":" in l)
    return int(d["VmHWM"].split()[0]) // 1024, int(d["VmRSS"].split()[0]) // 1024


def reset_peak():
    with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
        f.write("5")


def req(method, path, body=b"", headers=None, timeout=60, source=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                   source_address=(source, 0) if source else None)
    c.request(method, path, body=body, headers=headers or {"content-type": "application/json"})
    r = c.getresponse()
    b = r.read()
    c.close()
    return r.status, b


for _ in range(200):
    try:
        if req("GET", "/health/ready")[0] == 200:
            break
    except OSError:
        pass
    time.sleep(0.05)

chan = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
    ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
def grpc_raw(method, payload):
    call = chan.unary_unary(f"/eventgateway.v1.EventGatewayService/{method}",
                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(payload, timeout=60)
        return "OK", 0
    except grpc.RpcError as e:
        md = e.trailing_metadata() or ()
        size = len(e.details() or "") + sum(len(v) for k, v in md)
        return e.code().name, size


def normal_ms():
    best = []
    for _ in range(20):
        t = time.perf_counter()
        # From 127.0.0.2: another peer than the probes' 127.0.0.1 (the per-peer cap).
        st, _ = req("POST", "/api/v1/events", b'{"type":"t","source":"s"}', source="127.0.0.2")
        best.append((time.perf_counter() - t) * 1000)
        assert st == 200, st
    best.sort()
    return best[len(best) // 2], best[-1]


req("POST", "/api/v1/events", b'{"type":"t","source":"s"}')
_, idle = rss()
print(f"idle RSS {idle} MiB")
SIZE = 10 * 1024 * 1024 - 64 * 1024
rows = []


def shape(name, fn, parallel=4):
    reset_peak()
    _, before = rss()
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(parallel) as ex:
        results = list(ex.map(lambda _: fn(), range(parallel)))
    el = time.perf_counter() - t
    peak, _ = rss()
    rows.append((name, results[0], peak, peak - before, el))
    print(f"{name}: {results[0]!s:.120} peak {peak} MiB (+{peak - before}) in {el:.1f}s", flush=True)


empty_batch = b'{"events":[' + b",".join([b"{}"] * (SIZE // 3)) + b"]}"
shape("REST batch of empty {} x4 (10 MiB each)",
      lambda: (lambda r: (r[0], len(r[1])))(req("POST", "/api/v1/events/batch", empty_batch)))
shape("gRPC batch of empty events x4 (10 MiB each)",
      lambda: grpc_raw("IngestBatch", b"\x0a\x00" * (SIZE // 2)))
ext = b'{"type":"t","source":"s","extensions":{' + b",".join(
    b'"B%d":"v"' % i for i in range(700_000)) + b"}}"
shape(f"REST event, {ext.count(b':') - 2} bad extensions x4",
      lambda: (lambda r: (r[0], f"{len(r[1])} byte reply"))(req("POST", "/api/v1/events", ext)))
def pb_ext(n):
    ev = bytearray()
    for i in range(n):
        k = b"B%d" % i
        entry = b"\x0a" + bytes([len(k)]) + k + b"\x12\x01v"
        ev += b"\x52" + bytes([len(entry)]) + entry
    out = bytearray(b"\x0a")
    n = len(ev)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out + ev)
pbe = pb_ext(700_000)
shape("gRPC event, 700,000 bad extensions x4", lambda: grpc_raw("IngestEvent", pbe))

# Poison data.
poison = {
    "200,000 arrays deep": b"[" * 200_000 + b"1" + b"]" * 200_000,
    "80,000 objects deep": b'{"a":' * 80_000 + b"1" + b"}" * 80_000,
    "400,000-digit integer": b"9" * 400_000,
    "lone surrogate": b'"\\ud800"',
}
for name, d in poison.items():
    st, body = req("POST", "/api/v1/events", b'{"type":"t","source":"s","data":' + d + b"}")
    msg = json.loads(body)["details"][0]["fieldViolations"][0]
    rows.append((f"data: {name}", st, None, None, None))
    print(f"data {name}: {st} {msg['field']}: {msg['description'][:80]}")

# Malformed protobuf.
for name, b in {"truncated": b"\x0a\x05\x12\x03a", "bad wire type": b"\x0f",
                "invalid UTF-8": b"\x0a\x04\x12\x02\xff\xfe", "varint overflow": b"\x0a" + b"\xff" * 11}.items():
    print(f"protobuf {name}: {grpc_raw('IngestEvent', b)[0]}")

# /metrics inflation.
before = len(req("GET", "/metrics")[1])
for i in range(100):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"X%d" % i + b"M" * 65536 + b" /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
after = len(req("GET", "/metrics")[1])
print(f"/metrics: {before} -> {after} bytes after 100 distinct 64 KiB methods (431: over server.http1.max_head_size)")

# Half-open HTTP/2: 100 of each shape, all at once; how many are closed within 37 s.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
shapes = {"one byte": b"P", "partial preface": PREFACE[:10],
          "preface + SETTINGS, no ping acks": PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"}
socks = []
for name, b in shapes.items():
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b)
        s.setblocking(False)
        socks.append((name, s))
t0 = time.time()
closed = {n: 0 for n in shapes}
pending = list(socks)
while pending and time.time() - t0 < 37:
    still = []
    for name, s in pending:
        try:
            d = s.recv(65536)
            if d == b"":
                closed[name] += 1
                s.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            closed[name] += 1
            continue
        still.append((name, s))
    pending = still
    time.sleep(0.2)
print(f"half-open HTTP/2 closed within 37 s: {closed} (took {time.time() - t0:.0f}s)")
for _, s in pending:
    s.close()

# Connection flood: 5,000 at once (the per-peer cap is 1,000).
conns = []
for _ in range(5000):
    try:
        conns.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    except OSError:
        break
time.sleep(1)
_, flood_rss = rss()
med, worst = normal_ms()
print(f"5,000 connections opened ({len(conns)}); RSS {flood_rss} MiB; a normal request meanwhile: p50 {med:.1f} ms, max {worst:.1f} ms")
for s in conns:
    s.close()

# Raw HTTP/2 frames (HPACK literals with static-table names, no Huffman).
def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def lit(index, value):  # literal without indexing, indexed name (index < 15)
    return bytes([index, len(value)]) + value


def grpc_headers(path):
    return (b"\x83\x86" + lit(4, path) + lit(1, b"x")
            + b"\x0f\x10" + bytes([len(b"application/grpc")]) + b"application/grpc"
            + b"\x00\x02te\x08trailers")


SETTINGS0 = frame(4, 0, 0)


def h2_connect(source=None):
    s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0) if source else None)
    s.sendall(PREFACE + SETTINGS0)
    return s


def goaway_code(s, limit=20):
    """Reads until the server closes or `limit` s pass; the first GOAWAY's error code."""
    s.settimeout(limit)
    buf = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            while len(buf) >= 9:
                n = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + n:
                    break
                if buf[3] == 7:
                    return int.from_bytes(buf[9 + 4:9 + 8], "big")
                buf = buf[9 + n:]
    except OSError:
        pass
    return None


# One client holds bodiless gRPC calls: 10 connections x 1,000 streams, headers only.
reset_peak()
_, before = rss()
held = []
for c in range(10):
    s = h2_connect()
    block = grpc_headers(b"/eventgateway.v1.EventGatewayService/IngestEvent")
    s.sendall(b"".join(frame(1, 0x4, 2 * i + 1, block) for i in range(1000)))
    held.append(s)
time.sleep(2)
st_same, body_same = req("POST", "/api/v1/events", b'{"type":"t","source":"s"}')
med, worst = normal_ms()
peak, _ = rss()
print(f"one client, 10 x 1,000 bodiless gRPC calls: that client now gets {st_same} "
      f"({json.loads(body_same)['message'][:70]}); another client (127.0.0.2): p50 {med:.1f} ms, "
      f"max {worst:.1f} ms; peak {peak} MiB (+{peak - before})", flush=True)
for s in held:
    s.close()

# Rapid reset: 20,000 HEADERS + RST_STREAM on one connection.
reset_peak()
s = h2_connect()
block = b"\x83\x86" + lit(4, b"/api/v1/events") + lit(1, b"x")
flood = b"".join(frame(1, 0x4, 2 * i + 1, block) + frame(3, 0, 2 * i + 1, (8).to_bytes(4, "big"))
                 for i in range(20_000))
t = time.perf_counter()
try:
    s.sendall(flood)
except OSError:
    pass
code = goaway_code(s)
peak, _ = rss()
print(f"rapid reset (20,000 HEADERS + RST_STREAM): GOAWAY {code} (11 = ENHANCE_YOUR_CALM) "
      f"in {time.perf_counter() - t:.2f}s; normal request p50 {normal_ms()[0]:.1f} ms; peak {peak} MiB", flush=True)
s.close()

# CONTINUATION flood: a header block that never ends, up to 64 MiB.
reset_peak()
s = h2_connect()
s.sendall(frame(1, 0, 1, block))
field = b"\x00\x05x-pad" + bytes([100]) + b"a" * 100
cont = frame(9, 0, 1, field * 150)
sent = 0
s.settimeout(5)
try:
    while sent < 64 << 20:
        s.sendall(cont)
        sent += len(cont)
except OSError:
    pass
code = goaway_code(s, 5)
peak, _ = rss()
print(f"CONTINUATION flood: cut off after {sent >> 10} KiB written (socket buffers included), "
      f"GOAWAY {code}; peak {peak} MiB", flush=True)
s.close()

# 30,000 distinct 8 KiB x-api-key values (auth is off by default: never a limiter key).
reset_peak()
_, before = rss()
keyed = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
statuses = {}
for i in range(30_000):
    keyed.request("POST", "/api/v1/events", body=b'{"type":"t","source":"s"}',
                  headers={"content-type": "application/json", "x-api-key": f"k{i}-" + "x" * 8192})
    r = keyed.getresponse()
    r.read()
    statuses[r.status] = statuses.get(r.status, 0) + 1
keyed.close()
peak, now_rss = rss()
print(f"30,000 distinct 8 KiB x-api-key values: {statuses}; peak {peak} MiB (+{peak - before}), RSS {now_rss} MiB after", flush=True)

# Afterwards.
st_ready = req("GET", "/health/ready")[0]
med, worst = normal_ms()
t0 = time.time()
while True:
    _, now = rss()
    if now < 2 * idle or time.time() - t0 > 60:
        break
    time.sleep(0.5)
print(f"after: alive, /health/ready {st_ready}; normal request p50 {med:.1f} ms, max {worst:.1f} ms; "
      f"RSS {now} MiB {time.time() - t0:.0f}s later (idle {idle} MiB)")
proc.terminate()
print("exit code", proc.wait())
shutil.rmtree(data)
