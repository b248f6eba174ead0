//! A real tansu broker per test on a free port, and a Kafka reader that assigns every
//! partition from the beginning.
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::*;

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
                let mut header_list = Vec::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        header_list.push((
                            hd.key.to_owned(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        ));
                    }
                }
                let headers = header_list.iter().cloned().collect();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(|v| v.to_vec()),
                    headers,
                    header_list,
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
    /// The headers by name (the last of a repeated one).
    pub headers: HashMap<String, String>,
    /// Every header in record order, repeats included.
    pub header_list: Vec<(String, String)>,
}

impl Record {
    pub fn value_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or(b"null")).unwrap()
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

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}
