// Sends events with the CloudEvents JavaScript SDK's own HTTP emitter (emitterFor +
// httpTransport): binary mode, its default, and structured mode. Prints one JSON line per
// send with the reply body (the SDK's transport hands back the body and headers, not the
// status); tests/python_clients.rs reads them.
import { CloudEvent, Mode, emitterFor, httpTransport } from "cloudevents";

const url = `http://${process.argv[2]}/api/v1/events`;

function event(id) {
  return new CloudEvent({
    id,
    type: "user.created",
    source: "https://example.com/js",
    subject: "user 1",
    time: "2026-01-02T03:04:05.000Z",
    datacontenttype: "application/json",
    partitionkey: "k-1",
    data: { user_id: "1", email: "a@example.com" },
  });
}

for (const [name, mode] of [["binary", Mode.BINARY], ["structured", Mode.STRUCTURED]]) {
  const emit = emitterFor(httpTransport(url), { mode });
  const res = await emit(event(`js-${name}`));
  console.log(JSON.stringify({ case: name, reply: JSON.parse(res.body) }));
}
