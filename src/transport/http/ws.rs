//! WebSocket ingest on `GET /api/v1/events/ws`, the HTTP face of `IngestStream`: each text
//! frame is one event in the CloudEvents JSON format, or `{"sequence": n, "events": [...]}`
//! (an `IngestStreamRequest`, its events in the CloudEvents JSON format); each result goes
//! back as a text frame holding an `IngestStreamResponse` in JSON. The frames feed the core's
//! stream loop (`stream.rs`), exactly as IngestStream's messages do, so admission, validation,
//! the in-flight bound (the socket is not read past it) and the drain are the same.
//!
//! The server pings every half of `server.idle_timeout` and closes a socket that sent nothing,
//! not even a pong, for a whole `idle_timeout`. Close codes say why a socket ended: 1001 going
//! away (shutdown, idle), 1008 policy (a binary frame), 1009 too big (a frame over
//! `performance.max_request_size`), 1013 try again later (`performance.max_streams`).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
    rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use futures::{SinkExt as _, Stream, StreamExt as _};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::core::error::Error;
use crate::core::service::Gateway;
use crate::core::stream::{self, Admit, End, StreamAdmission, Submission};
use crate::telemetry::throttle::LogThrottle;
use crate::transport::http::cloudevents::decode_structured_value;
use crate::transport::http::json;
use crate::transport::reply::stream_reply;
use crate::transport::routes::{ROUTE_EVENTS_WS, Rejection, method_not_allowed};
use crate::transport::stack;
use crate::transport::status;

#[derive(Clone)]
struct WsState {
    gateway: Arc<Gateway>,
    max_message: usize,
    max_in_flight: usize,
    idle_timeout: Duration,
    /// `server.cors` lists origins: its layer has checked the `Origin` already. Else an
    /// upgrade with an `Origin` of another site (a browser's) is refused here
    /// (`stack::cors`'s paragraph, [`same_origin`]).
    browsers: bool,
    refused_log: Arc<LogThrottle>,
}

/// The subprotocol the gateway selects when a client offers it: browsers sending their
/// token as a `bearer.<token>` offer must offer this one too (a browser fails a handshake
/// that selects none of several offers).
pub const WS_SUBPROTOCOL: &str = "eventgateway.v1";

/// The WebSocket route. Frames over `max_message` bytes close the socket with 1009.
/// `browsers`: `server.cors` lists origins (see [`WsState`]).
pub fn router(
    gateway: Arc<Gateway>,
    max_message: usize,
    max_in_flight: usize,
    idle_timeout: Duration,
    browsers: bool,
) -> Router {
    Router::new()
        .route(ROUTE_EVENTS_WS, get(upgrade))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(WsState {
            gateway,
            max_message,
            max_in_flight,
            idle_timeout,
            browsers,
            refused_log: Arc::new(LogThrottle::new(Duration::from_secs(10))),
        })
}

async fn upgrade(
    State(s): State<WsState>,
    admission: Option<Extension<StreamAdmission>>,
    headers: http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !s.browsers
        && let Some(origin) = headers.get(http::header::ORIGIN)
        && !same_origin(origin, &headers)
    {
        let e = stack::origin_refused(origin, ROUTE_EVENTS_WS, &s.refused_log);
        return status::respond(false, e);
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(r) => {
            return Rejection::UpgradeRequired {
                path: ROUTE_EVENTS_WS,
                reason: r.body_text(),
            }
            .into_response();
        }
    };
    let opened = match admission {
        Some(Extension(StreamAdmission(opened))) => opened,
        None => Err(Error::Internal(
            "the WebSocket route is served outside its admission layer".into(),
        )),
    };
    // The request's trace goes with the socket, so its context reaches the records.
    let trace = crate::telemetry::CurrentTrace::capture();
    // A browser that offered its token as a subprotocol (`transport::stack::authn`) gets
    // `eventgateway.v1` selected; never the token, which would echo it back.
    ws.protocols([WS_SUBPROTOCOL])
        .max_message_size(s.max_message)
        .max_frame_size(s.max_message)
        .on_upgrade(move |socket| trace.carry(session(s, opened, socket)))
}

/// Whether `origin` names the host the request was sent to (its `Host`; WebSockets come
/// over HTTP/1 only here), scheme aside: a client that is not a browser but sends an
/// `Origin` anyway (Python's websocket-client sends `http://` or `https://` and its `Host`)
/// passes, another site's page is refused. Gorilla WebSocket's default check is the same.
/// What it cannot tell apart (docs/security.md): a page on the same host and port in the
/// other scheme, and a DNS-rebinding page (same `Host`); listing origins in `server.cors`
/// does, credentials do. The scheme is not compared because behind a proxy that ends TLS
/// the gateway cannot know which one the client used.
fn same_origin(origin: &http::HeaderValue, headers: &http::HeaderMap) -> bool {
    let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// Why the socket's input ended, beyond the client closing it.
#[derive(Debug)]
enum Broken {
    /// A frame over the size limit.
    TooBig,
    /// A binary frame.
    Binary,
    /// Nothing arrived, not even a pong, for `idle_timeout`.
    Idle,
    /// The connection failed.
    Read,
}

/// A close frame; its reason cut to the 123 bytes a control frame has room for (RFC 6455
/// 5.5), at a character boundary.
fn close_frame(code: u16, reason: &str) -> Message {
    // `str::floor_char_boundary` would do this, but it is newer (1.91) than our MSRV (1.88).
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// One WebSocket: frames in, reports out, pings and the idle close, until either side ends
/// it. One piece: a `select!` over the socket, the stream loop and the timers, whose arms
/// share the socket.
async fn session(s: WsState, opened: Result<Arc<dyn Admit>, Error>, mut socket: WebSocket) {
    let admit = match opened {
        Ok(_) if s.gateway.streams_stopped() => {
            let bye = close_frame(
                close_code::AWAY,
                "the gateway is shutting down; connect again",
            );
            if socket.send(bye).await.is_ok() {
                client_close(&mut socket).await;
            }
            return;
        }
        Ok(admit) => admit,
        Err(e) => {
            if socket
                .send(close_frame(close_code::AGAIN, &e.to_string()))
                .await
                .is_ok()
            {
                client_close(&mut socket).await;
            }
            return;
        }
    };
    let (mut out, mut frames) = socket.split();
    let max = s.max_message;
    // Borrowed: after a close of ours, the client's close is read from it (below).
    let input = tokio_stream::StreamExt::timeout(&mut frames, s.idle_timeout).filter_map(|item| {
        futures::future::ready(match item {
            Err(_elapsed) => Some(Err(Broken::Idle)),
            Ok(Err(e)) => Some(Err(read_error(e))),
            Ok(Ok(Message::Text(text))) => Some(Ok(decode_frame(text.as_str()))),
            Ok(Ok(Message::Binary(_))) => Some(Err(Broken::Binary)),
            // tungstenite answers pings itself; a pong only proves the client is there. After
            // a close frame the stream ends.
            Ok(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => None,
        })
    });
    let (results, mut reports) = mpsc::channel(s.max_in_flight);
    let run = stream::run(s.gateway.clone(), admit, input, results, s.max_in_flight);
    let keepalive = s.idle_timeout / 2;
    let write = async {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            let frame = tokio::select! {
                report = reports.recv() => match report {
                    Some(r) => {
                        Message::Text(json::stream_response(&stream_reply(r)).into())
                    }
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            if out.send(frame).await.is_err() {
                break;
            }
        }
        drop(reports);
        out
    };
    let (end, mut out) = tokio::join!(run, write);
    let bye = match end {
        End::Closed | End::Gone | End::Broken(Broken::Read) => None,
        End::Draining => Some((
            close_code::AWAY,
            "the gateway is shutting down; events without a result were not taken: send them again"
                .to_owned(),
        )),
        // A revoked or expired credential is the client's to fix (1008); the lifetime only
        // asks it to reconnect (1001).
        End::Refused(e @ Error::Unauthenticated { .. }) => {
            Some((close_code::POLICY, e.to_string()))
        }
        End::Refused(e) => Some((close_code::AWAY, e.to_string())),
        End::Broken(Broken::Idle) => Some((
            close_code::AWAY,
            "nothing received, not even a pong, within server.idle_timeout".to_owned(),
        )),
        End::Broken(Broken::TooBig) => Some((
            close_code::SIZE,
            format!("a frame exceeds the limit of {max} bytes (performance.max_request_size)"),
        )),
        End::Broken(Broken::Binary) => Some((
            close_code::POLICY,
            "text frames only: one event in the CloudEvents JSON format, or {\"events\": [...]}"
                .to_owned(),
        )),
    };
    if let Some((code, reason)) = bye
        && out.send(close_frame(code, &reason)).await.is_ok()
    {
        client_close(&mut frames).await;
    }
    let _ = out.close().await;
}

/// How long a WebSocket we close waits for the client's close frame (as long as a closed
/// connection reads on, `server::linger`).
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The rest of the close handshake once our close frame is sent (RFC 6455 §7.1.1): what the
/// client still sends is read and dropped until its close, for [`CLOSE_WAIT`] at most,
/// before the socket closes. A socket closed with the client's frames unread sends a TCP
/// reset, which can overtake the close frame: a client still sending saw a reset, not 1001.
/// (hyper hands an upgraded connection over without the staged close of `server::linger`.)
async fn client_close(frames: &mut (impl Stream<Item = Result<Message, axum::Error>> + Unpin)) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = frames.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A read error: a frame over the size limit is the client's, anything else the connection's.
fn read_error(e: axum::Error) -> Broken {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => Broken::TooBig,
        _ => Broken::Read,
    }
}

/// One text frame: an event in the CloudEvents JSON format, or a request frame (an object
/// whose `events` member is an array; no CloudEvents attribute can be an array, so the two
/// cannot be confused). What cannot be read is one failed event; an event that cannot be
/// decoded fails alone.
fn decode_frame(text: &str) -> Submission {
    let members: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Submission::unreadable(Error::Malformed(format!(
                "a frame is one event in the CloudEvents JSON format, or {{\"events\": [...]}}: {e}"
            )));
        }
    };
    let is_request = members
        .get("events")
        .is_some_and(|raw| raw.get().trim_start().starts_with('['));
    if !is_request {
        return Submission {
            sequence: None,
            events: vec![decode_structured_value(members, "event").map_err(Error::InvalidArgument)],
        };
    }
    decode_request(members)
}

fn decode_request(mut members: BTreeMap<String, Box<RawValue>>) -> Submission {
    let events = members.remove("events").expect("checked by the caller");
    let sequence = members.remove("sequence");
    if let Some(unknown) = members.keys().next() {
        return Submission::unreadable(Error::Malformed(format!(
            "unknown member `{unknown}`: a request frame has `events` and optionally `sequence`"
        )));
    }
    let sequence = match sequence.as_deref().map(parse_sequence) {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            return Submission::unreadable(Error::Malformed(
                "`sequence` must be a whole number from 0 to 2^64-1 (a number or a decimal string)"
                    .into(),
            ));
        }
    };
    match serde_json::from_str::<Vec<BTreeMap<String, Box<RawValue>>>>(events.get()) {
        Ok(items) => Submission {
            sequence,
            events: items
                .into_iter()
                .map(|m| decode_structured_value(m, "event").map_err(Error::InvalidArgument))
                .collect(),
        },
        Err(e) => Submission {
            sequence,
            events: vec![Err(Error::Malformed(format!(
                "`events` must be an array of events in the CloudEvents JSON format: {e}"
            )))],
        },
    }
}

/// A uint64 in the proto3 JSON mapping: a number or a decimal string.
fn parse_sequence(raw: &RawValue) -> Option<u64> {
    serde_json::from_str::<u64>(raw.get())
        .ok()
        .or_else(|| serde_json::from_str::<String>(raw.get()).ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Submission) -> Vec<Result<String, String>> {
        s.events
            .iter()
            .map(|e| match e {
                Ok(i) => Ok(i.event.id.clone()),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }

    #[test]
    fn a_frame_is_an_event_or_a_request() {
        let one = decode_frame(r#"{"id":"a","type":"t","source":"s","events":"x"}"#);
        assert_eq!(one.sequence, None);
        assert_eq!(ids(&one), vec![Ok("a".to_owned())]);
        // `events` as a string is an extension attribute of a single event.
        assert_eq!(
            one.events[0].as_ref().unwrap().event.extensions["events"],
            "x"
        );

        let req = decode_frame(r#"{"sequence":"7","events":[{"id":"a"},{"id":"b","x":[1]}]}"#);
        assert_eq!(req.sequence, Some(7));
        let got = ids(&req);
        assert_eq!(got[0], Ok("a".to_owned()));
        assert!(
            got[1].as_ref().unwrap_err().contains("event.extensions[x]"),
            "{got:?}"
        );

        let num = decode_frame(r#"{"sequence":3,"events":[]}"#);
        assert_eq!((num.sequence, num.events.len()), (Some(3), 0));
    }

    #[test]
    fn unreadable_frames_say_what_a_frame_is() {
        for (frame, says) in [
            ("not json", "a frame is one event"),
            ("[1,2]", "a frame is one event"),
            (r#"{"events":[],"extra":1}"#, "unknown member `extra`"),
            (
                r#"{"events":[],"sequence":-1}"#,
                "`sequence` must be a whole number",
            ),
            (r#"{"events":[1]}"#, "`events` must be an array of events"),
        ] {
            let s = decode_frame(frame);
            let got = ids(&s);
            assert_eq!(got.len(), 1, "{frame}");
            assert!(
                got[0].as_ref().unwrap_err().contains(says),
                "{frame}: {got:?}"
            );
        }
    }

    /// The close handshake waits for the client's close frame, and for CLOSE_WAIT at most
    /// when none comes; frames before the close are dropped.
    #[tokio::test]
    async fn the_close_handshake_ends_at_the_clients_close_or_the_wait() {
        let started = tokio::time::Instant::now();
        client_close(&mut futures::stream::pending()).await;
        let took = started.elapsed();
        assert!(took >= CLOSE_WAIT && took < CLOSE_WAIT * 2, "{took:?}");

        let mut frames = futures::stream::iter([
            Ok(Message::Text("late".into())),
            Ok(Message::Close(None)),
            Ok(Message::Text("after the close".into())),
        ]);
        let started = tokio::time::Instant::now();
        client_close(&mut frames).await;
        assert!(started.elapsed() < CLOSE_WAIT);
        assert!(
            frames.next().await.is_some(),
            "read past the client's close"
        );
    }

    #[test]
    fn an_origin_is_the_same_when_it_names_the_host_the_request_went_to() {
        let check = |origin: &str, host: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(h) = host {
                headers.insert(http::header::HOST, h.parse().unwrap());
            }
            same_origin(&origin.parse().unwrap(), &headers)
        };
        assert!(check("http://gw.internal:8090", Some("gw.internal:8090")));
        assert!(check("https://GW.internal", Some("gw.internal")));
        assert!(!check("https://evil.example", Some("gw.internal")));
        assert!(!check("http://gw.internal:8091", Some("gw.internal:8090")));
        assert!(!check("https://gw.internal/path", Some("gw.internal")));
        assert!(!check("null", Some("gw.internal")));
        assert!(!check("gw.internal", Some("gw.internal")));
        assert!(!check("http://gw.internal", None));
    }
}
