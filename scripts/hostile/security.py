"""The hostile-input run's security rows (#24 items 1, 2 and 4; #28's hostile browser origin),
against a second gateway started with API keys, a trusted proxy (127.0.0.1), a small rate
limit (5/s, burst 5) and one CORS origin (https://app.example.com).
Prints one line per probe with what was expected. Run it through scripts/hostile/run.
Usage: python security.py BIN REPO_DIR"""
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from websockets.sync.client import connect

BIN, REPO = sys.argv[1], sys.argv[2]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
data = tempfile.mkdtemp()
KEY_A, KEY_B = "a" * 32, "b" * 32


def write_keys(*keys):
    entries = [{"id": f"team-{k[0]}", "sha256": hashlib.sha256(k.encode()).hexdigest()} for k in keys]
    tmp = f"{data}/keys.yaml.tmp"
    with open(tmp, "w") as f:
        json.dump(entries, f)  # JSON is YAML
    os.replace(tmp, f"{data}/keys.yaml")


write_keys(KEY_A, KEY_B)
env = dict(os.environ, GATEWAY_SERVER_ADDRESS=f"127.0.0.1:{port}",
           GATEWAY_STORAGE_DATA_DIR=data + "/data", GATEWAY_LOGGING_LEVEL="warn",
           GATEWAY_SERVER_CORS_ALLOWED_ORIGINS="https://app.example.com",
           GATEWAY_SERVER_TRUSTED_PROXIES="127.0.0.1/32",
           GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND="5", GATEWAY_RATE_LIMIT_BURST_SIZE="5",
           GATEWAY_AUTH_API_KEYS_FILE=f"{data}/keys.yaml")
log = open(f"{data}/gateway.log", "w")
proc = subprocess.Popen([BIN, "--config", f"{REPO}/config.yaml"], env=env,
                        stdout=log, stderr=subprocess.DEVNULL)
EVENT = b'{"specversion":"1.0","id":"h1","type":"user.created","source":"hostile","data":{"user_id":"1"}}'


def req(method, path, body=b"", headers=()):
    """`headers` is a list of pairs: a name may repeat (two X-Forwarded-For lines)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.putrequest(method, path)
    for k, v in [("content-type", "application/json"), ("content-length", str(len(body))), *headers]:
        c.putheader(k, v)
    c.endheaders(body)
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
else:
    sys.exit("the secured gateway never became ready")

# 1. Twelve requests, each with a forged first X-Forwarded-For line (rotating) and the line
# the proxy appended (always the same client): one bucket, so 5 pass and 7 get 429.
statuses = {}
for i in range(12):
    st, _ = req("POST", "/api/v1/events", EVENT,
                [("x-forwarded-for", f"198.51.100.{i}"), ("x-forwarded-for", "203.0.113.7")])
    statuses[st] = statuses.get(st, 0) + 1
print(f"forged first X-Forwarded-For line x12 (5/s, burst 5): {statuses} (want 5 x 200, 7 x 429)", flush=True)
time.sleep(1.5)  # the bucket refills: the probes below start from a full one

# 2. A WebSocket opened with a key, fed every 200 ms; the key is revoked.
ws = connect(f"ws://127.0.0.1:{port}/api/v1/events/ws", additional_headers={"x-api-key": KEY_A})
stored, revoked, closed = 0, None, None
start = time.monotonic()
while closed is None and time.monotonic() - start < 20:
    try:
        ws.send(EVENT.decode())
    except Exception:  # closed by the gateway: the close frame is still read below
        pass
    try:
        while True:
            msg = json.loads(ws.recv(timeout=0.2))
            stored += msg.get("outcome") == "OUTCOME_STORED"
            if revoked is None and stored >= 3:
                write_keys(KEY_B)
                revoked = time.monotonic()
    except TimeoutError:
        pass
    except Exception:
        closed = time.monotonic()
code = ws.close_code if ws.close_code is not None else (ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
reason = ws.protocol.close_rcvd.reason if ws.protocol.close_rcvd else ""
after = f"{closed - revoked:.1f}s after the revocation" if closed and revoked else "never"
print(f"WebSocket whose key is revoked: closed {code} {reason!r} {after}; "
      f"{stored} stored before (want 1008 within 5 s)", flush=True)
write_keys(KEY_A, KEY_B)

# 4. /health/detailed: from loopback through the trusted proxy, a forwarded client outside
# auth.health_details_from sees the brief view; credentials see it all, behind the bucket.
time.sleep(1.5)
st, body = req("GET", "/health/detailed")
brief = "config" not in json.loads(body)
st2, body2 = req("GET", "/health/detailed", headers=[("x-forwarded-for", "127.0.0.1")])
brief2 = "config" not in json.loads(body2)
print(f"/health/detailed from loopback, trusted_proxies set: {st}, brief {brief}; "
      f"with X-Forwarded-For 127.0.0.1: {st2}, brief {brief2} (want brief both)", flush=True)
statuses = {}
for _ in range(12):
    st, _ = req("GET", "/health/detailed", headers=[("x-api-key", KEY_B)])
    statuses[st] = statuses.get(st, 0) + 1
print(f"/health/detailed with a key x12 (5/s, burst 5): {statuses} (want some 429)", flush=True)
time.sleep(1.5)
statuses = {}
for i in range(12):
    st, _ = req("GET", "/health/detailed", headers=[("authorization", f"Bearer bogus-{i}")])
    statuses[st] = statuses.get(st, 0) + 1
print(f"/health/detailed with bad credentials x12: {statuses} (want 5 x 200 brief, then 429)", flush=True)

# 5. (#28) A hostile browser origin: 1,000 requests and preflights from unlisted origins, some
# 8 KiB long, with a valid key; refused with 403 before the rate limit, each reply bounded (the
# origin quoted cut to 200 characters), the log one line per 10 s; a WebSocket from such a page
# with the key offered as a subprotocol is refused too; the listed origin's preflight passes.
time.sleep(1.5)
statuses, longest, start = {}, 0, time.monotonic()
for i in range(1000):
    origin = f"https://evil-{i}.example" if i % 2 else "https://" + "e" * 8000 + ".example"
    method, body = ("OPTIONS", b"") if i % 3 == 0 else ("POST", EVENT)
    hs = [("origin", origin), ("x-api-key", KEY_A)]
    if method == "OPTIONS":
        hs.append(("access-control-request-method", "POST"))
    st, b = req(method, "/api/v1/events", body, hs)
    statuses[st] = statuses.get(st, 0) + 1
    longest = max(longest, len(b))
took = time.monotonic() - start
time.sleep(0.2)
log.flush()
lines = sum("server.cors.allowed_origins" in line for line in open(f"{data}/gateway.log"))
print(f"unlisted browser origins x1000 with a valid key: {statuses} in {took:.1f}s, largest reply "
      f"{longest} B, {lines} log line(s) (want 1000 x 403, replies < 1 KiB, 1 line per 10 s)", flush=True)
try:
    ws = connect(f"ws://127.0.0.1:{port}/api/v1/events/ws", origin="https://evil.example",
                 subprotocols=["eventgateway.v1", f"bearer.{KEY_A}"])
    ws.close()
    outcome = "opened"
except Exception as e:  # websockets raises InvalidStatus on a refused handshake
    outcome = getattr(getattr(e, "response", None), "status_code", repr(e))
print(f"WebSocket from an unlisted origin with a key as its subprotocol: {outcome} (want 403)", flush=True)
st, _ = req("OPTIONS", "/api/v1/events", b"", [("origin", "https://app.example.com"),
                                                 ("access-control-request-method", "POST")])
print(f"preflight from the listed origin: {st} (want 200)", flush=True)

proc.terminate()
print("secured gateway exit code", proc.wait())

# 6. (#28) A hostile identity provider: the gateway asked to fetch its JWT keys from a server
# that stalls, sends 2 MiB, sends no JWK Set, or redirects in a loop. Each start must end
# soon (10 s bound per fetch) with an error naming the URL and what was wrong, exit code 1.
import http.server
import threading


class Hostile(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(30)
            return
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("location", "/loop")
            self.end_headers()
            return
        body = b"[" * (2 * 1024 * 1024) if self.path == "/huge" else b"<html>not keys</html>"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()  # no content-length: the size shows only while reading
        self.wfile.write(body)


idp = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
idp.daemon_threads = True
threading.Thread(target=idp.serve_forever, daemon=True).start()
for path in ["/slow", "/huge", "/malformed", "/loop"]:
    env = dict(os.environ, GATEWAY_SERVER_ADDRESS=f"127.0.0.1:{port}",
               GATEWAY_STORAGE_DATA_DIR=data + "/data", GATEWAY_LOGGING_LEVEL="error",
               GATEWAY_AUTH_JWT_JWKS_URL=f"http://127.0.0.1:{idp.server_address[1]}{path}",
               GATEWAY_AUTH_JWT_ISSUER="https://idp.example", GATEWAY_AUTH_JWT_AUDIENCE="gw")
    start = time.monotonic()
    out = subprocess.run([BIN, "--config", f"{REPO}/config.yaml"], env=env, capture_output=True,
                         text=True, timeout=60)
    said = next((line for line in (out.stderr + out.stdout).splitlines() if "identity provider" in line),
                "(nothing)")
    said = said[said.find("identity provider"):][:150]
    print(f"hostile provider {path}: exit {out.returncode} after {time.monotonic() - start:.1f}s: "
          f"{said} (want exit 1 within ~10 s, naming the URL)", flush=True)
idp.shutdown()
shutil.rmtree(data)
