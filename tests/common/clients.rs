//! Clients and requests the tests share: reqwest, the seed event, gRPC health.
use std::time::Duration;

use tonic::transport::Channel;

use super::*;

/// The seed's example body, verbatim.
pub const SEED_EVENT: &str = r#"{"type":"user.created","source":"user-service","subject":"user-123","data":{"user_id":"123","email":"user@example.com"}}"#;

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs a body as `application/json`; returns the response as it is.
pub async fn post_raw(client: &reqwest::Client, url: &str, body: &str) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// POSTs a JSON body; returns status and parsed reply.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let r = post_raw(client, url, body).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

/// POSTs the seed event with a client deadline of `secs`, for asserting a prompt answer (far
/// below kafka.message_timeout): a hanging request fails the test instead of waiting.
pub async fn post_seed_within(url: &str, secs: u64) -> reqwest::Response {
    http()
        .post(url)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(secs))
        .body(SEED_EVENT)
        .send()
        .await
        .unwrap()
}

/// Waits until gRPC health reports `want` for `service`.
pub async fn wait_grpc_health(
    channel: Channel,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let health = HealthClient::new(channel);
    wait_until(
        Duration::from_secs(5),
        &format!("gRPC health {want:?} for {service:?}"),
        || {
            let mut h = health.clone();
            let req = HealthCheckRequest {
                service: service.into(),
            };
            async move {
                h.check(req)
                    .await
                    .is_ok_and(|r| r.into_inner().status == want as i32)
            }
        },
    )
    .await;
}

/// Ingest over both protocols is refused as UNAVAILABLE: REST 503 with `Retry-After`, gRPC
/// UNAVAILABLE. Returns the REST reply's headers and body, for the caller's own checks.
pub async fn assert_unavailable_over_both_protocols(
    gw: &TestGateway,
) -> (reqwest::header::HeaderMap, serde_json::Value) {
    use event_gateway::proto::{CloudEvent, IngestEventRequest};
    // A client deadline far below kafka.message_timeout: a hanging request fails the test.
    let r = post_seed_within(&gw.url("/api/v1/events"), 5).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let headers = r.headers().clone();
    let body: serde_json::Value = r.json().await.unwrap();
    let ev: CloudEvent = serde_json::from_str(SEED_EVENT).unwrap();
    let err = gw
        .grpc()
        .await
        .ingest_event(IngestEventRequest {
            event: Some(ev),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    (headers, body)
}

/// One gRPC health check, no retries: the status it reports right now.
pub async fn grpc_health_now(
    channel: Channel,
    service: &str,
) -> tonic_health::pb::health_check_response::ServingStatus {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    tonic_health::pb::health_check_response::ServingStatus::try_from(status).unwrap()
}

/// The body of a GET of `url` with `client`, as text: a scrape of `/metrics`, a page.
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}
