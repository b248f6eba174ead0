//! The gateway under test: in process through the library's own `serve` on port 0
//! ([`TestGateway`]), or the real binary ([`start_binary`]); waiting on conditions.
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use event_gateway::{Config, ServeReport, StartupError};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use super::*;

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with `what` then.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running gateway on 127.0.0.1:<random>.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<ServeReport, StartupError>>>,
}

/// Defaults for tests: local log in a temp dir, port 0, quiet rate limits.
pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.address = "127.0.0.1:0".into();
    c.storage.data_dir = data_dir.to_path_buf();
    c.rate_limit.enabled = false;
    c.shutdown.drain_timeout = Duration::from_secs(10);
    c
}

impl TestGateway {
    /// Serves `config` (its data dir replaced by a fresh temp dir when `local_log`).
    pub async fn start(config: Config) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = config;
        if config.kafka.brokers.is_empty() {
            config.storage.data_dir = data_dir.path().to_path_buf();
        } else if config.spool.dir.is_none() {
            // Each gateway its own spool, unless the test chose one (a restart keeps it).
            config.spool.dir = Some(data_dir.path().join("spool"));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(event_gateway::serve(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            data_dir,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start(test_config(dir.path())).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn grpc(&self) -> EventGatewayServiceClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        EventGatewayServiceClient::new(ch)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Events of the local log, parsed.
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        log_text(self.data_dir.path())
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The local log as CloudEvents JSON lines, as `event-gateway log` prints it.
    pub fn log_text(&self) -> String {
        log_text(self.data_dir.path())
    }

    /// GETs `path` and parses the JSON reply.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        http()
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs `{"events": events}` to the REST batch route.
    pub async fn post_batch(&self, events: &[serde_json::Value]) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "events": events }).to_string();
        post_json(&http(), &self.url("/api/v1/events/batch"), &body).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        get_text(&http(), self.url("/metrics")).await
    }

    /// Waits (10 s at most) until `/metrics` holds `text`: a counter reaching a value, a
    /// series appearing.
    pub async fn wait_metrics_containing(&self, text: &str) {
        wait_until(Duration::from_secs(10), text, || async {
            self.metrics().await.contains(text)
        })
        .await;
    }

    /// IngestEvent over gRPC with `event` and the default ack, on a fresh connection.
    pub async fn grpc_ingest(
        &self,
        event: event_gateway::proto::CloudEvent,
    ) -> Result<event_gateway::proto::IngestEventResponse, tonic::Status> {
        use event_gateway::proto::IngestEventRequest;
        let request = IngestEventRequest {
            event: Some(event),
            ..Default::default()
        };
        Ok(self.grpc().await.ingest_event(request).await?.into_inner())
    }

    /// Sends the seed event over gRPC and expects success.
    pub async fn grpc_ingest_seed(&self) {
        self.grpc_ingest(serde_json::from_str(SEED_EVENT).unwrap())
            .await
            .unwrap();
    }

    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = self.url("/health/ready");
        wait_until(Duration::from_secs(30), "gateway readiness", || {
            let req = client.get(&url).send();
            async move { req.await.map(|r| r.status() == 200).unwrap_or(false) }
        })
        .await;
    }

    /// Waits until `/health/ready` answers 503 with a reason that contains `text`.
    pub async fn wait_not_ready_naming(&self, text: &str) {
        let client = reqwest::Client::new();
        let url = self.url("/health/ready");
        wait_until(
            Duration::from_secs(15),
            &format!("readiness 503 naming {text:?}"),
            || {
                let req = client.get(&url).send();
                async move {
                    match req.await {
                        Ok(r) if r.status() == 503 => r
                            .json::<serde_json::Value>()
                            .await
                            .is_ok_and(|b| b["reason"].as_str().is_some_and(|r| r.contains(text))),
                        _ => false,
                    }
                }
            },
        )
        .await;
    }

    /// Signals shutdown and waits for `serve` to return; the data directory outlives it.
    pub async fn stop_keeping_data(mut self) -> (ServeReport, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        (self.stop().await, dir)
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> ServeReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.unwrap().unwrap()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The local log in `dir` as CloudEvents JSON lines (empty when there is none).
pub fn log_text(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for (_, json) in event_gateway::spool::read_events(dir).unwrap() {
        out.push_str(std::str::from_utf8(&json).unwrap());
        out.push('\n');
    }
    out
}

/// The gateway's own binary.
pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_event-gateway");

/// The real binary on a free port of 127.0.0.1 with a config file of `yaml` (every section
/// but `server`, which this adds) written into `dir`, its working directory; returned once
/// `/health/ready` answers 200, with its base URL. Killed on drop.
pub async fn start_binary(
    dir: &std::path::Path,
    yaml: &str,
    stdout: Stdio,
) -> (tokio::process::Child, String) {
    start_binary_on(free_port(), dir, yaml, stdout).await
}

/// [`start_binary`] on a chosen port (a restart where the last one ran).
pub async fn start_binary_on(
    port: u16,
    dir: &std::path::Path,
    yaml: &str,
    stdout: Stdio,
) -> (tokio::process::Child, String) {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("server:\n  address: 127.0.0.1:{port}\n{yaml}"),
    )
    .unwrap();
    let child = tokio::process::Command::new(GATEWAY_BIN)
        .args(["--config", config.to_str().unwrap()])
        .current_dir(dir)
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = http();
    let ready = format!("{base}/health/ready");
    wait_until(
        Duration::from_secs(30),
        "the binary to become ready",
        || {
            let r = c.get(&ready).send();
            async move { r.await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    (child, base)
}
