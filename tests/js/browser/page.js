// A front end sending events to the gateway on another origin: the CloudEvents SDK builds
// each message (structured mode, binary mode, a batch), fetch sends it with the token in
// `Authorization` (a non-simple request: the browser preflights it first), and a WebSocket
// offers the token as a `bearer.<token>` subprotocol beside `eventgateway.v1`. Every outcome
// goes into window.results (status, reply, the readable x-request-id, or the error the
// browser raised), then window.done is set; tests/js/browser.mjs collects them.
(async () => {
  const params = new URLSearchParams(location.search);
  const gw = params.get("gw");
  const token = params.get("token");
  const tag = params.get("tag");
  const { CloudEvent, HTTP } = window.cloudevents;
  const results = {};
  let n = 0;
  const event = (name) =>
    new CloudEvent({
      id: `${tag}-${name}`,
      type: "user.created",
      source: "browser-page",
      data: { user_id: String(++n), email: `${name}@example.com` },
    });

  async function send(name, path, message) {
    try {
      const r = await fetch(gw + path, {
        method: "POST",
        headers: { ...message.headers, authorization: `Bearer ${token}` },
        body: message.body,
      });
      results[name] = {
        status: r.status,
        requestId: r.headers.get("x-request-id"),
        reply: await r.json(),
      };
    } catch (e) {
      results[name] = { error: String(e) };
    }
  }

  await send("structured", "/api/v1/events", HTTP.structured(event("structured")));
  await send("binary", "/api/v1/events", HTTP.binary(event("binary")));
  await send("batch", "/api/v1/events/batch", {
    headers: { "content-type": "application/cloudevents-batch+json" },
    body: JSON.stringify([event("batch-1"), event("batch-2")]),
  });

  results.ws = await new Promise((resolve) => {
    const url = gw.replace(/^http/, "ws") + "/api/v1/events/ws";
    const out = { replies: [] };
    let ws;
    try {
      ws = new WebSocket(url, ["eventgateway.v1", `bearer.${token}`]);
    } catch (e) {
      resolve({ error: String(e) });
      return;
    }
    const timer = setTimeout(() => resolve({ ...out, error: "timed out" }), 10000);
    ws.onopen = () => {
      out.protocol = ws.protocol;
      ws.send(JSON.stringify(event("ws")));
    };
    ws.onmessage = (m) => {
      out.replies.push(JSON.parse(m.data));
      ws.close(1000);
    };
    ws.onerror = () => {
      out.error = "websocket error";
    };
    ws.onclose = (c) => {
      clearTimeout(timer);
      resolve({ ...out, closeCode: c.code });
    };
  });

  window.results = results;
  document.getElementById("out").textContent = JSON.stringify(results, null, 2);
  window.done = true;
})();
