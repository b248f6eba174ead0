//! The chaos suite: the broker paused past `kafka.message_timeout`, the gateway killed with
//! SIGKILL while clients retry, latency, packet loss and a partition between gateway and
//! broker, and a client that gives up before the reply and retries. Every request is
//! counted Jepsen-style from its client's side: acknowledged, refused (an answer that is not
//! a success), or no answer (the client's deadline, a broken connection); then the topic is
//! read back (tansu over TCP) for what was lost (acknowledged, not in Kafka) and duplicated.
mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use event_gateway::Config;
use event_gateway::proto::{CloudEvent, IngestEventRequest};
use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const TOPIC: &str = "events";

/// How one attempt ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// 2xx / OK: the gateway says the event is stored.
    Acked,
    /// The gateway answered, and not with a success (HTTP status or gRPC code).
    Refused(String),
    /// No answer: the client's deadline passed or the connection broke. Indefinite.
    NoAnswer(String),
}

#[derive(Clone, Debug)]
struct Attempt {
    id: String,
    outcome: Outcome,
    sent: Instant,
    took: Duration,
}

/// Every attempt of every client, in the order they ended.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<Vec<Attempt>>>);

impl Ledger {
    fn push(&self, a: Attempt) {
        self.0.lock().unwrap().push(a);
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.0.lock().unwrap().clone()
    }

    /// The ids with at least one attempt that ended as `pred` says.
    fn ids(&self, pred: impl Fn(&Outcome) -> bool) -> HashSet<String> {
        let attempts = self.0.lock().unwrap();
        attempts
            .iter()
            .filter(|a| pred(&a.outcome))
            .map(|a| a.id.clone())
            .collect()
    }

    /// Attempts sent at or after `t` that ended as `pred` says.
    fn count_since(&self, t: Instant, pred: impl Fn(&Outcome) -> bool) -> usize {
        let attempts = self.0.lock().unwrap();
        attempts
            .iter()
            .filter(|a| a.sent >= t && pred(&a.outcome))
            .count()
    }

    async fn wait_since(
        &self,
        t: Instant,
        n: usize,
        within: Duration,
        what: &str,
        pred: impl Fn(&Outcome) -> bool + Copy,
    ) {
        wait_until(within, what, || {
            let enough = self.count_since(t, pred) >= n;
            async move { enough }
        })
        .await;
    }

    async fn wait_acked_since(&self, t: Instant, n: usize, within: Duration, what: &str) {
        self.wait_since(t, n, within, what, |o| *o == Outcome::Acked)
            .await;
    }
}

/// The counts a chaos run ends with.
#[derive(Debug)]
struct Tally {
    requests: usize,
    acked: usize,
    refused: HashMap<String, usize>,
    no_answer: usize,
    /// Acknowledged and not in the topic.
    lost: Vec<String>,
    /// In the topic more than once.
    duplicated: Vec<String>,
    /// Ids with at least one attempt that got no answer.
    had_no_answer: HashSet<String>,
}

impl Tally {
    fn of(ledger: &Ledger, records: &[Record]) -> Tally {
        let mut stored: HashMap<String, usize> = HashMap::new();
        for r in records {
            *stored.entry(r.headers["ce_id"].clone()).or_insert(0) += 1;
        }
        let mut tally = Tally {
            requests: 0,
            acked: 0,
            refused: HashMap::new(),
            no_answer: 0,
            lost: Vec::new(),
            duplicated: Vec::new(),
            had_no_answer: HashSet::new(),
        };
        let mut acked_ids = HashSet::new();
        for a in ledger.attempts() {
            tally.requests += 1;
            match a.outcome {
                Outcome::Acked => {
                    tally.acked += 1;
                    acked_ids.insert(a.id);
                }
                Outcome::Refused(code) => *tally.refused.entry(code).or_insert(0) += 1,
                Outcome::NoAnswer(_) => {
                    tally.no_answer += 1;
                    tally.had_no_answer.insert(a.id);
                }
            }
        }
        tally.lost = acked_ids
            .into_iter()
            .filter(|id| !stored.contains_key(id))
            .collect();
        tally.lost.sort();
        tally.duplicated = stored
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(id, _)| id)
            .collect();
        tally.duplicated.sort();
        tally
    }

    /// Reads the topic back (at least every acknowledged id) and counts.
    fn read_back(ledger: &Ledger, broker: &Broker) -> Tally {
        let acked = ledger.ids(|o| *o == Outcome::Acked).len();
        let records = broker.read_all(TOPIC, acked, Duration::from_secs(30));
        Tally::of(ledger, &records)
    }

    fn print(&self, run: &str) {
        println!(
            "chaos {run}: requests {}, acked {}, refused {:?}, no answer {}, lost {}, duplicated {}",
            self.requests,
            self.acked,
            self.refused,
            self.no_answer,
            self.lost.len(),
            self.duplicated.len()
        );
    }

    /// Nothing acknowledged is missing, and nothing is in the topic twice.
    fn assert_exactly_once(&self) {
        assert!(
            self.lost.is_empty(),
            "acknowledged, not stored: {:?}",
            self.lost
        );
        assert!(
            self.duplicated.is_empty(),
            "stored more than once: {:?}",
            self.duplicated
        );
    }

    /// Every request got an answer from the gateway, and every refusal was the retryable
    /// 503 / UNAVAILABLE.
    fn assert_definite_and_retryable(&self) {
        assert_eq!(self.no_answer, 0, "requests without an answer: {self:?}");
        assert!(
            self.refused
                .keys()
                .all(|c| c == "503" || c == "Unavailable"),
            "only 503 / UNAVAILABLE may refuse: {:?}",
            self.refused
        );
    }
}

/// One client of one protocol, giving each attempt `deadline`.
struct Client {
    base: String,
    http: reqwest::Client,
    grpc: Option<EventGatewayServiceClient<Channel>>,
}

impl Client {
    fn new(base: &str, grpc: bool) -> Client {
        Client {
            base: base.to_owned(),
            http: http(),
            // Lazy: a gateway that is down (killed, restarting) is a failed attempt, not a
            // failed test.
            grpc: grpc.then(|| {
                EventGatewayServiceClient::new(
                    Channel::from_shared(base.to_owned())
                        .unwrap()
                        .connect_lazy(),
                )
            }),
        }
    }

    async fn send(&mut self, id: &str, deadline: Duration) -> Outcome {
        self.send_reply(id, deadline).await.0
    }

    /// The outcome, and on success whether the reply said `duplicate`.
    async fn send_reply(&mut self, id: &str, deadline: Duration) -> (Outcome, bool) {
        let body = json!({"id": id, "type": "chaos.test", "source": "chaos", "subject": id, "data": {"id": id}});
        match &mut self.grpc {
            Some(c) => {
                let ev: CloudEvent = serde_json::from_value(body).unwrap();
                let mut req = tonic::Request::new(IngestEventRequest {
                    event: Some(ev),
                    ..Default::default()
                });
                req.set_timeout(deadline);
                match tokio::time::timeout(deadline, c.ingest_event(req)).await {
                    Err(_) => (Outcome::NoAnswer("deadline".into()), false),
                    Ok(Ok(r)) => (Outcome::Acked, r.into_inner().duplicate),
                    // A status with a source is tonic's own (no connection, a reset stream),
                    // not an answer from the gateway.
                    Ok(Err(s)) if std::error::Error::source(&s).is_some() => {
                        (Outcome::NoAnswer(format!("{:?}", s.code())), false)
                    }
                    Ok(Err(s)) => (Outcome::Refused(format!("{:?}", s.code())), false),
                }
            }
            None => {
                let sent = self
                    .http
                    .post(format!("{}/api/v1/events", self.base))
                    .header("content-type", "application/json")
                    .timeout(deadline)
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) => (Outcome::Acked, v["duplicate"] == true),
                        Err(e) => (Outcome::NoAnswer(format!("reply body: {e}")), false),
                    },
                    Ok(r) => (Outcome::Refused(r.status().as_u16().to_string()), false),
                    Err(e) if e.is_timeout() => (Outcome::NoAnswer("deadline".into()), false),
                    Err(_) => (Outcome::NoAnswer("connection".into()), false),
                }
            }
        }
    }
}

/// Clients sending one event per request, closed loop, until stopped.
struct Load {
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients, alternating gRPC and REST. With `retry`, a client sends the same id
    /// again after every attempt that was not acknowledged, as a client of an idempotent
    /// consumer would, and stops only once its current id is acknowledged.
    fn start(base: &str, clients: usize, tag: &str, retry: bool, deadline: Duration) -> Load {
        let ledger = Ledger::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|t| {
                let (ledger, stop) = (ledger.clone(), stop.clone());
                let mut client = Client::new(base, t % 2 == 0);
                let tag = format!("{tag}{t}");
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{tag}-{i}");
                        loop {
                            let sent = Instant::now();
                            let outcome = client.send(&id, deadline).await;
                            let acked = outcome == Outcome::Acked;
                            ledger.push(Attempt {
                                id: id.clone(),
                                outcome,
                                sent,
                                took: sent.elapsed(),
                            });
                            if acked || !retry {
                                break;
                            }
                            // A little back-off, so a dead gateway is not spun on.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            ledger,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.ledger
    }
}

fn kafka_config(bootstrap: &str, message_timeout: Duration) -> Config {
    let mut c = test_config(&std::env::temp_dir());
    c.kafka.brokers = vec![bootstrap.to_owned()];
    c.kafka.topic = TOPIC.into();
    c.kafka.message_timeout = message_timeout;
    // The shortest the config check allows: a refused request is answered this soon.
    c.performance.request_timeout = message_timeout + Duration::from_secs(2);
    c
}

async fn ready_status(c: &reqwest::Client, base: &str) -> u16 {
    c.get(format!("{base}/health/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn producer_rebuilds(gw: &TestGateway) -> u64 {
    gw.get_json("/health/detailed").await["sink"]["producer_rebuilds"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_paused_past_message_timeout_refuses_in_time_and_recovers() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 2).await;
    let message_timeout = Duration::from_secs(3);
    let config = kafka_config(&broker.bootstrap(), message_timeout);
    let request_timeout = config.performance.request_timeout;
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let base = format!("http://{}", gw.addr);
    // The clients wait longer than the gateway's own deadline: a hang shows as no answer.
    let load = Load::start(&base, 4, "p", false, request_timeout * 2);
    load.ledger
        .wait_acked_since(
            Instant::now() - Duration::from_secs(60),
            30,
            Duration::from_secs(30),
            "acks before the pause",
        )
        .await;

    broker.pause();
    let paused = Instant::now();
    load.ledger
        .wait_since(
            paused,
            4,
            Duration::from_secs(30),
            "refusals while the broker is paused",
            |o| matches!(o, Outcome::Refused(_)),
        )
        .await;
    // The fault's length is the experiment: twice the delivery deadline, so events time
    // out in librdkafka and its idempotent producer bumps its epoch (which tansu fences).
    tokio::time::sleep_until((paused + message_timeout * 2).into()).await;
    broker.resume();
    let resumed = Instant::now();
    load.ledger
        .wait_acked_since(
            resumed,
            1,
            Duration::from_secs(5),
            "an event sent after the broker returned, acknowledged within 5 s",
        )
        .await;
    println!(
        "chaos pause: first new ack {:?} after the broker returned",
        resumed.elapsed()
    );
    load.ledger
        .wait_acked_since(resumed, 40, Duration::from_secs(30), "acks after the pause")
        .await;
    let rebuilds = producer_rebuilds(&gw).await;
    let ledger = load.finish().await;

    let tally = Tally::read_back(&ledger, &broker);
    tally.print("pause");
    tally.assert_definite_and_retryable();
    tally.assert_exactly_once();
    // None hung: every refusal came within the gateway's deadline (and a little scheduling).
    let slowest = ledger
        .attempts()
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Refused(_)))
        .map(|a| a.took)
        .max()
        .unwrap();
    assert!(
        slowest <= request_timeout + Duration::from_secs(1),
        "a refusal took {slowest:?}"
    );
    assert!(
        rebuilds >= 1,
        "the fenced producer was replaced (kafka_producer_rebuilds {rebuilds})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_retrying_clients_stores_every_acked_id_once() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "kafka:\n  brokers: [\"{}\"]\n  topic: {TOPIC}\nack:\n  default: stored\nrate_limit:\n  enabled: false\nstorage:\n  data_dir: {}\nlogging:\n  level: warn\n",
        broker.bootstrap(),
        dir.path().join("data").display()
    );
    let port = free_port();
    let (mut child, base) = start_binary_on(port, dir.path(), &yaml, Stdio::null()).await;
    let load = Load::start(&base, 4, "k", true, Duration::from_secs(5));
    let start = Instant::now();
    load.ledger
        .wait_acked_since(start, 100, Duration::from_secs(30), "acks before the kill")
        .await;

    child.kill().await.unwrap(); // SIGKILL: no drain, no flush
    let killed = Instant::now();
    let (_child, _) = start_binary_on(port, dir.path(), &yaml, Stdio::null()).await;
    load.ledger
        .wait_acked_since(
            killed,
            100,
            Duration::from_secs(60),
            "acks after the restart",
        )
        .await;
    let ledger = load.finish().await;

    let tally = Tally::read_back(&ledger, &broker);
    tally.print("sigkill");
    assert!(tally.no_answer > 0, "the kill was felt by the clients");
    assert!(
        tally.lost.is_empty(),
        "acknowledged, not stored: {:?}",
        tally.lost
    );
    // A retry writes an event again only when its first attempt's fate was unknown.
    let unexplained: Vec<_> = tally
        .duplicated
        .iter()
        .filter(|id| !tally.had_no_answer.contains(*id))
        .collect();
    assert!(
        unexplained.is_empty(),
        "duplicates whose attempts were all answered: {unexplained:?}"
    );
    // Each client stops on an acknowledged id: none was given up on.
    let ids = ledger.ids(|_| true);
    let acked = ledger.ids(|o| *o == Outcome::Acked);
    assert_eq!(ids, acked, "every id was acknowledged in the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_and_retries_gets_its_event_stored_once() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let broker = Broker::start(TOPIC, 1).await;
    let mut config = kafka_config(&broker.bootstrap(), Duration::from_secs(20));
    config.dedup.window = Duration::from_secs(300);
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let base = format!("http://{}", gw.addr);
    let ledger = Ledger::default();

    // The broker is slow (paused): each client's first attempt gives up before the reply.
    broker.pause();
    let mut clients = [Client::new(&base, false), Client::new(&base, true)];
    let ids = ["impatient-rest", "impatient-grpc"];
    for (c, id) in clients.iter_mut().zip(ids) {
        let sent = Instant::now();
        let outcome = c.send(id, Duration::from_millis(300)).await;
        assert!(
            matches!(outcome, Outcome::NoAnswer(_)),
            "{id}: the first attempt gets no answer: {outcome:?}"
        );
        ledger.push(Attempt {
            id: id.into(),
            outcome,
            sent,
            took: sent.elapsed(),
        });
    }
    broker.resume();
    // Each retries the same id, patiently: acknowledged, and told it was a duplicate of the
    // attempt it gave up on (which the gateway kept delivering after the client left).
    for (c, id) in clients.iter_mut().zip(ids) {
        let sent = Instant::now();
        let (outcome, duplicate) = c.send_reply(id, Duration::from_secs(25)).await;
        assert_eq!(outcome, Outcome::Acked, "{id}: the retry is acknowledged");
        assert!(duplicate, "{id}: the retry is answered as a duplicate");
        ledger.push(Attempt {
            id: id.into(),
            outcome,
            sent,
            took: sent.elapsed(),
        });
    }

    let tally = Tally::read_back(&ledger, &broker);
    tally.print("timeout-and-retry");
    tally.assert_exactly_once();
}

/// A network namespace with a veth pair to the test's own, its addresses inside
/// 10.231.<n>.0/24, and an nftables table `chaos` of its own; all removed on drop. Nothing
/// outside the namespace and the veth is touched.
struct Netns {
    name: String,
    host_if: String,
    ns_ip: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let n = std::process::id() % 200 + 20;
        let ns = Netns {
            name: format!("egchaos{}", std::process::id()),
            host_if: format!("egh{}", std::process::id()),
            ns_ip: format!("10.231.{n}.2"),
        };
        let peer = format!("egn{}", std::process::id());
        let host_ip = format!("10.231.{n}.1/24");
        let ns_cidr = format!("{}/24", ns.ns_ip);
        let name = ns.name.as_str();
        run(&["ip", "netns", "add", name])?;
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        run(&["ip", "link", "set", &peer, "netns", name])?;
        run(&["ip", "addr", "add", &host_ip, "dev", &ns.host_if])?;
        run(&["ip", "link", "set", &ns.host_if, "up"])?;
        for cmd in [
            vec!["addr", "add", ns_cidr.as_str(), "dev", peer.as_str()],
            vec!["link", "set", peer.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut args = vec!["ip", "netns", "exec", name, "ip"];
            args.extend(cmd);
            run(&args)?;
        }
        ns.nft(
            "add table inet chaos\n\
             add chain inet chaos input { type filter hook input priority 0; policy accept; }\n\
             add chain inet chaos output { type filter hook output priority 0; policy accept; }\n",
        )?;
        Ok(ns)
    }

    /// Applies an nftables script inside the namespace.
    fn nft(&self, script: &str) -> Result<(), String> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Drops the broker's packets (both directions) as `verdict` says: `Some("numgen random
    /// mod 100 < 5")` for 5% loss, `Some("")` for all of them (a partition), `None` for none.
    fn drop_broker_packets(&self, port: u16, matching: Option<&str>) {
        let mut script = "flush chain inet chaos input\nflush chain inet chaos output\n".to_owned();
        if let Some(m) = matching {
            script.push_str(&format!(
                "add rule inet chaos input tcp dport {port} {m} drop\n\
                 add rule inet chaos output tcp sport {port} {m} drop\n"
            ));
        }
        self.nft(&script).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the peer end, and with it the pair and its table.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// The namespace, or `None` (the test skips; fails under EVENT_GATEWAY_REQUIRE_ALL) where
/// this process may not create one (not root, no iproute2 or nftables).
fn netns_or_skip() -> Option<Netns> {
    require(Tool::Nft)?;
    match Netns::create() {
        Ok(ns) => Some(ns),
        Err(e) if std::env::var_os("EVENT_GATEWAY_REQUIRE_ALL").is_some_and(|v| v == "1") => {
            panic!("cannot create a network namespace: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot create a network namespace ({e}); run as root");
            None
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of the broker that holds every chunk for `delay` in
/// each direction: latency as netem would add it. Hand-rolled because this kernel has no
/// netem (CONFIG_NET_SCH_NETEM is unset: `tc qdisc add ... netem` is "unknown qdisc"), and
/// a proxy in the test needs no crate; loss and the partition are real kernel drops
/// (nftables, in the namespace) between the proxy and the broker.
struct DelayProxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    async fn start(upstream: SocketAddr) -> DelayProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(Self::pump(cr, sw, delay.clone()), Self::pump(sr, cw, delay));
                });
            }
        });
        DelayProxy {
            port,
            delay_ms,
            task,
        }
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Arc<AtomicU64>,
    ) {
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let reader = async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                let due = tokio::time::Instant::now()
                    + Duration::from_millis(delay.load(Ordering::Relaxed));
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        };
        let writer = async move {
            while let Some((due, chunk)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = to.shutdown().await;
        };
        tokio::join!(reader, writer);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_loss_and_a_partition_lose_nothing_and_readiness_follows_the_broker() {
    let Some(_) = require(Tool::Tansu) else {
        return;
    };
    let Some(ns) = netns_or_skip() else {
        return;
    };
    const BROKER_PORT: u16 = 9092;
    let proxy = DelayProxy::start(format!("{}:{BROKER_PORT}", ns.ns_ip).parse().unwrap()).await;
    let broker = Broker::spawn_in(Some(&ns.name), &ns.ns_ip, BROKER_PORT, proxy.port);
    broker.create_topic(TOPIC, 2).await;
    let message_timeout = Duration::from_secs(5);
    let config = kafka_config(&broker.bootstrap(), message_timeout);
    let request_timeout = config.performance.request_timeout;
    let gw = TestGateway::start(config).await;
    gw.wait_ready().await;
    let base = format!("http://{}", gw.addr);
    let c = http();
    let load = Load::start(&base, 4, "n", false, request_timeout * 2);
    let ledger = load.ledger.clone();
    let acks = |t: Instant, n: usize, what: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger
                .wait_acked_since(t, n, Duration::from_secs(60), what)
                .await
        }
    };
    acks(
        Instant::now() - Duration::from_secs(60),
        30,
        "acks on a clean network",
    )
    .await;

    // 200 ms each way between gateway and broker: slower, every request still answered.
    proxy.set_delay(Duration::from_millis(200));
    let slow = Instant::now() + Duration::from_millis(50);
    acks(slow, 20, "acks with 200 ms latency").await;
    let fastest = ledger
        .attempts()
        .iter()
        .filter(|a| a.sent >= slow && a.outcome == Outcome::Acked)
        .map(|a| a.took)
        .min()
        .unwrap();
    assert!(
        fastest >= Duration::from_millis(400),
        "the latency was in place: fastest ack {fastest:?}"
    );
    proxy.set_delay(Duration::ZERO);

    // 5% of the broker's packets dropped, both ways: TCP retransmits, nothing is lost.
    ns.drop_broker_packets(BROKER_PORT, Some("numgen random mod 100 < 5"));
    acks(Instant::now(), 30, "acks with 5% packet loss").await;

    // A partition: readiness goes, requests are refused in time (never hang).
    ns.drop_broker_packets(BROKER_PORT, Some(""));
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(40),
        "not ready during the partition",
        || {
            let r = ready_status(&c, &base);
            async move { r.await == 503 }
        },
    )
    .await;
    println!("chaos partition: not ready after {:?}", cut.elapsed());
    ledger
        .wait_since(
            cut,
            1,
            Duration::from_secs(40),
            "a refusal during the partition",
            |o| matches!(o, Outcome::Refused(_)),
        )
        .await;

    // Healed: ready again, and new events are acknowledged.
    ns.drop_broker_packets(BROKER_PORT, None);
    let healed = Instant::now();
    wait_until(Duration::from_secs(40), "ready after the heal", || {
        let r = ready_status(&c, &base);
        async move { r.await == 200 }
    })
    .await;
    acks(healed, 20, "acks after the heal").await;
    println!(
        "chaos partition: ready and acknowledging {:?} after the heal",
        healed.elapsed()
    );
    let ledger = load.finish().await;

    let tally = Tally::read_back(&ledger, &broker);
    tally.print("network");
    tally.assert_definite_and_retryable();
    tally.assert_exactly_once();
    drop(ns);
}
