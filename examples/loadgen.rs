//! The benchmark's load generator for what wrk cannot drive: gRPC (tonic, HTTP/2), and
//! open-loop runs at a fixed offered rate. In open loop a request is sent on schedule whatever
//! the outstanding ones do (a late tick is sent at once, so a stall cannot lower the offered
//! rate), paced by a thread of its own rather than tokio's 1 ms timer; latency is measured
//! from the actual send, and how late sends were against the schedule is reported
//! (`sched_lag_p99_ms`).
//!
//! `loadgen --proto grpc|rest --addr 127.0.0.1:8090 --batch 1 --concurrency 50
//!          --connections 4 --seconds 10 [--rate 5000] [--threads N]`
//! (fixed-rate runs use one thread unless `--threads` says otherwise).
//! `loadgen --proto grpc-stream|ws --connections 2 --concurrency 1000 --seconds 10`: closed
//! loop over streams of single events (IngestStream, or the WebSocket route): `connections`
//! streams, each with at most `concurrency` events awaiting their result; latency is from
//! sending an event to its result.
//! Prints one line of `key=value` figures.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use event_gateway::proto::{CloudEvent, IngestBatchRequest, IngestEventRequest};
use event_gateway::transport::grpc::event_gateway_service_client::EventGatewayServiceClient;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tonic::transport::Channel;

#[derive(Parser, Debug, Clone)]
struct Args {
    #[arg(long, default_value = "grpc")]
    proto: String,
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered requests per second (open loop); closed loop when absent.
    #[arg(long)]
    rate: Option<u64>,
    /// A header (REST) or metadata entry (gRPC) on every request, `name:value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// The generator's tokio worker threads; 0: one thread (a current-thread runtime).
    /// Default: one for fixed-rate runs, one per core for closed loop.
    #[arg(long)]
    threads: Option<usize>,
}

fn event(i: u64) -> serde_json::Value {
    serde_json::json!({
        "type": "user.created",
        "source": "user-service",
        "subject": format!("user-{}", i % 100_000),
        "data": {"user_id": i.to_string(), "email": "user@example.com"}
    })
}

static SCHED_LAG_P99_US: AtomicU64 = AtomicU64::new(0);

/// Requests built before the run, so the generator spends its (shared) CPU on sending.
const POOL: u64 = 1024;

struct Prebuilt {
    singles: Vec<CloudEvent>,
    batches: Vec<Vec<CloudEvent>>,
    single_json: Vec<String>,
    batch_json: Vec<String>,
}

fn prebuild(batch: usize) -> Prebuilt {
    let singles: Vec<CloudEvent> = (0..POOL)
        .map(|i| serde_json::from_value(event(i)).unwrap())
        .collect();
    let single_json = (0..POOL).map(|i| event(i).to_string()).collect();
    let batches: Vec<Vec<CloudEvent>> = (0..16)
        .map(|b| {
            (0..batch as u64)
                .map(|k| serde_json::from_value(event(b * 1000 + k)).unwrap())
                .collect()
        })
        .collect();
    let batch_json = (0..16u64)
        .map(|b| {
            let events: Vec<_> = (0..batch as u64).map(|k| event(b * 1000 + k)).collect();
            serde_json::json!({ "events": events }).to_string()
        })
        .collect();
    Prebuilt {
        singles,
        batches,
        single_json,
        batch_json,
    }
}

#[derive(Clone)]
enum Client {
    Grpc(
        Vec<EventGatewayServiceClient<Channel>>,
        Arc<Vec<(String, String)>>,
    ),
    Rest(reqwest::Client, String, Arc<Vec<(String, String)>>),
}

/// `--header name:value` pairs.
fn parse_headers(raw: &[String]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        raw.iter()
            .map(|h| {
                let (k, v) = h.split_once(':').expect("--header name:value");
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect(),
    )
}

fn with_metadata<T>(msg: T, headers: &[(String, String)]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for (k, v) in headers {
        let key: tonic::metadata::MetadataKey<tonic::metadata::Ascii> = k.parse().unwrap();
        r.metadata_mut().insert(key, v.parse().unwrap());
    }
    r
}

impl Client {
    async fn send(&self, i: u64, batch: usize, pre: &Prebuilt) -> bool {
        match self {
            Client::Grpc(clients, headers) => {
                let mut c = clients[(i as usize) % clients.len()].clone();
                if batch == 1 {
                    let ev = pre.singles[(i % POOL) as usize].clone();
                    c.ingest_event(with_metadata(
                        IngestEventRequest {
                            event: Some(ev),
                            ..Default::default()
                        },
                        headers,
                    ))
                    .await
                    .is_ok()
                } else {
                    let events = pre.batches[(i % 16) as usize].clone();
                    c.ingest_batch(with_metadata(
                        IngestBatchRequest {
                            events,
                            ..Default::default()
                        },
                        headers,
                    ))
                    .await
                    .is_ok_and(|r| r.into_inner().failed_count == 0)
                }
            }
            Client::Rest(c, base, headers) => {
                let (url, body) = if batch == 1 {
                    (
                        format!("{base}/api/v1/events"),
                        pre.single_json[(i % POOL) as usize].clone(),
                    )
                } else {
                    (
                        format!("{base}/api/v1/events/batch"),
                        pre.batch_json[(i % 16) as usize].clone(),
                    )
                };
                let mut req = c.post(url).header("content-type", "application/json");
                for (k, v) in headers.iter() {
                    req = req.header(k.as_str(), v.as_str());
                }
                req.body(body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        }
    }
}

/// One stream's closed loop: sends single events while fewer than `window` await a result
/// and the deadline has not passed, then waits for the outstanding ones. Returns (stored,
/// failed, latencies).
async fn stream_loop(
    proto: String,
    addr: String,
    window: usize,
    deadline: Instant,
    pre: Arc<Prebuilt>,
) -> (u64, u64, Histogram<u64>) {
    use event_gateway::proto::IngestStreamRequest;
    use futures::{SinkExt as _, StreamExt as _};
    use std::collections::HashMap;
    let room = Arc::new(tokio::sync::Semaphore::new(window));
    let sent = Arc::new(std::sync::Mutex::new(HashMap::<u64, Instant>::new()));
    // Results as (sequence, stored?), from either face.
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let mut sender = {
        let (room, sent) = (room.clone(), sent.clone());
        let stamp = move |seq: u64| {
            sent.lock().unwrap().insert(seq, Instant::now());
        };
        if proto == "grpc-stream" {
            let ch = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .expect("connect");
            let (tx, rx) = tokio::sync::mpsc::channel::<IngestStreamRequest>(window);
            let mut replies = EventGatewayServiceClient::new(ch)
                .ingest_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("open IngestStream")
                .into_inner();
            tokio::spawn(async move {
                while let Some(Ok(r)) = replies.next().await {
                    let _ = results_tx.send((r.sequence, r.outcome == 1));
                }
            });
            tokio::spawn(async move {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    room.acquire().await.unwrap().forget();
                    stamp(seq);
                    let ev = pre.singles[(seq % POOL) as usize].clone();
                    let req = IngestStreamRequest {
                        sequence: Some(seq),
                        events: vec![ev],
                    };
                    if tx.send(req).await.is_err() {
                        break;
                    }
                    seq += 1;
                }
                seq
            })
        } else {
            let url = format!("ws://{addr}/api/v1/events/ws");
            let (ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let (mut out, mut frames) = ws.split();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = frames.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                        let seq = v["sequence"].as_str().unwrap().parse().unwrap();
                        let _ = results_tx.send((seq, v["outcome"] == "OUTCOME_STORED"));
                    }
                }
            });
            tokio::spawn(async move {
                let mut seq = 0u64;
                while Instant::now() < deadline {
                    room.acquire().await.unwrap().forget();
                    stamp(seq);
                    let frame = pre.single_json[(seq % POOL) as usize].clone();
                    if out.send(frame.into()).await.is_err() {
                        break;
                    }
                    seq += 1;
                }
                // Dropping the sending half does not close the socket: the reader's half
                // keeps it open until every result is in.
                seq
            })
        }
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut stored, mut failed) = (0u64, 0u64);
    let mut total = None;
    loop {
        if let Some(t) = total
            && stored + failed >= t
        {
            break;
        }
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(30), results.recv()) => {
                // No result for 30 s, or the stream ended: what is missing counts as failed.
                let Ok(Some((seq, ok))) = r else {
                    failed += total.unwrap_or(stored + failed).saturating_sub(stored + failed);
                    break;
                };
                if let Some(t) = sent.lock().unwrap().remove(&seq) {
                    let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                }
                if ok { stored += 1 } else { failed += 1 }
                room.add_permits(1);
            }
            n = &mut sender, if total.is_none() => total = Some(n.unwrap()),
        }
    }
    (stored, failed, hist)
}

async fn streams_main(args: Args) {
    let pre = Arc::new(prebuild(1));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let runs: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            tokio::spawn(stream_loop(
                args.proto.clone(),
                args.addr.clone(),
                args.concurrency,
                deadline,
                pre.clone(),
            ))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut ok, mut errors) = (0, 0);
    for r in runs {
        let (s, f, h) = r.await.unwrap();
        ok += s;
        errors += f;
        hist.add(&h).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "loadgen proto={} batch=1 concurrency={} rate=closed requests={ok} errors={errors} seconds={elapsed:.2} rps={:.0} events_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} sched_lag_p99_ms=0",
        args.proto,
        args.concurrency,
        ok as f64 / elapsed,
        ok as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
    );
}

fn main() {
    let args = Args::parse();
    // A fixed rate of a few thousand requests a second needs one thread, and on a machine the
    // gateway shares, every extra runnable thread is a chance to delay the gateway's own: with
    // two workers the generator took ~40% of a core at 5,000/s, and the local log's measured
    // p99 was 1.25-4.1 ms in four runs, against 0.84-1.28 ms in eight of nine runs with one
    // thread (the ninth 3.1 ms; same gateway, same hour).
    // Closed loop wants every core.
    let threads = args
        .threads
        .unwrap_or(if args.rate.is_some() { 0 } else { num_cpus() });
    let runtime = match threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    runtime.expect("a tokio runtime").block_on(run(args));
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn run(args: Args) {
    if args.proto == "grpc-stream" || args.proto == "ws" {
        return streams_main(args).await;
    }
    let client = if args.proto == "grpc" {
        let mut v = Vec::new();
        for _ in 0..args.connections.max(1) {
            let ch = Channel::from_shared(format!("http://{}", args.addr))
                .unwrap()
                .connect()
                .await
                .expect("connect");
            v.push(EventGatewayServiceClient::new(ch));
        }
        Client::Grpc(v, parse_headers(&args.headers))
    } else {
        Client::Rest(
            reqwest::Client::builder()
                .pool_max_idle_per_host(args.concurrency)
                .build()
                .unwrap(),
            format!("http://{}", args.addr),
            parse_headers(&args.headers),
        )
    };
    let pre = Arc::new(prebuild(args.batch));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);

    match args.rate {
        None => {
            let mut tasks = Vec::new();
            for _ in 0..args.concurrency {
                let (client, hist, ok, errors, counter, pre) = (
                    client.clone(),
                    hist.clone(),
                    ok.clone(),
                    errors.clone(),
                    counter.clone(),
                    pre.clone(),
                );
                let batch = args.batch;
                tasks.push(tokio::spawn(async move {
                    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                    while Instant::now() < deadline {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        if client.send(i, batch, &pre).await {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = local.record(t.elapsed().as_micros() as u64);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    hist.lock().await.add(&local).unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        Some(rate) => {
            let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
            // The schedule is kept by a thread of its own with `std::thread::sleep`
            // (nanosleep, tens of µs late), not by a tokio interval: tokio's timer has a
            // 1 ms resolution, so at 5,000/s it fired once a millisecond with five sends at
            // once, and the fifth queued behind the other four. A late tick still sends at
            // once (a stall cannot lower the offered rate).
            let handle = tokio::runtime::Handle::current();
            let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
            let (hist, ok, errors) = (hist.clone(), ok.clone(), errors.clone());
            let pacer = std::thread::spawn(move || {
                let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut next_send = Instant::now();
                while next_send < deadline {
                    let now = Instant::now();
                    if next_send > now {
                        std::thread::sleep(next_send - now);
                    }
                    let _ = lag.record(next_send.elapsed().as_micros().max(1) as u64);
                    next_send += interval;
                    let (client, hist, ok, errors, pre) = (
                        client.clone(),
                        hist.clone(),
                        ok.clone(),
                        errors.clone(),
                        pre.clone(),
                    );
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let batch = args.batch;
                    let task = handle.spawn(async move {
                        let sent = Instant::now();
                        if client.send(i, batch, &pre).await {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let _ = hist.lock().await.record(sent.elapsed().as_micros() as u64);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    let _ = done_tx.send(task);
                }
                lag
            });
            while let Some(task) = done_rx.recv().await {
                task.await.unwrap();
            }
            let lag = pacer.join().expect("the pacer thread");
            SCHED_LAG_P99_US.store(lag.value_at_quantile(0.99), Ordering::Relaxed);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    let ok = ok.load(Ordering::Relaxed);
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "loadgen proto={} batch={} concurrency={} rate={} requests={} errors={} seconds={:.2} rps={:.0} events_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} sched_lag_p99_ms={:.3}",
        args.proto,
        args.batch,
        args.concurrency,
        args.rate
            .map(|r| r.to_string())
            .unwrap_or_else(|| "closed".into()),
        ok,
        errors.load(Ordering::Relaxed),
        elapsed,
        ok as f64 / elapsed,
        (ok * args.batch as u64) as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        SCHED_LAG_P99_US.load(Ordering::Relaxed) as f64 / 1000.0,
    );
}
