//! librdkafka's statistics, kept for the request path and for health: when a broker was last
//! seen UP (one atomic, read by every readiness check), and a snapshot of brokers and queue
//! depth for `/health/detailed` and the `kafka_*` gauges. The client context also logs
//! librdkafka's errors.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

/// How often librdkafka reports statistics.
pub(super) const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Statistics older than this no longer prove a broker is reachable.
pub(super) const STATS_STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct BrokerState {
    pub(super) name: String,
    pub(super) state: String,
    pub(super) rtt_avg_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct StatsSnapshot {
    pub(super) at: Option<Instant>,
    pub(super) brokers: Vec<BrokerState>,
    pub(super) queue_depth: u64,
}

/// What librdkafka's statistics callback leaves for the request path and for health.
#[derive(Default)]
pub(super) struct Stats {
    /// For `/health/detailed` and metrics, read on those requests only.
    pub(super) snapshot: Mutex<StatsSnapshot>,
    /// When the latest statistics last showed a broker UP, in ms since `epoch()` (0: none).
    /// An atomic, so the per-request readiness check shares no lock across requests.
    pub(super) up_at_ms: AtomicU64,
}

pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub(super) fn now_ms() -> u64 {
    // +1 so that a reading taken at the epoch itself is not mistaken for "never".
    epoch().elapsed().as_millis() as u64 + 1
}

/// librdkafka callbacks: statistics feed readiness and `/health/detailed`; errors are logged.
pub struct GatewayContext {
    pub(super) stats: Arc<Stats>,
}

impl ClientContext for GatewayContext {
    fn stats(&self, s: Statistics) {
        let mut brokers: Vec<BrokerState> = s
            .brokers
            .values()
            // nodeid -1 entries are bootstrap placeholders, not brokers of the cluster.
            .filter(|b| b.nodeid >= 0)
            .map(|b| BrokerState {
                name: b.name.clone(),
                state: b.state.clone(),
                rtt_avg_ms: b.rtt.as_ref().map(|w| w.avg as f64 / 1000.0),
                rtt_p99_ms: b.rtt.as_ref().map(|w| w.p99 as f64 / 1000.0),
            })
            .collect();
        brokers.sort_by(|a, b| a.name.cmp(&b.name));
        let up = brokers.iter().any(|b| b.state == "UP");
        *self.stats.snapshot.lock().expect("stats lock") = StatsSnapshot {
            at: Some(Instant::now()),
            brokers,
            queue_depth: s.msg_cnt,
        };
        self.stats
            .up_at_ms
            .store(if up { now_ms() } else { 0 }, Ordering::Relaxed);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Expected while a broker is away; readiness already reflects it.
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(target: "event_gateway::kafka", %error, reason, "kafka broker unreachable")
            }
            _ => {
                tracing::error!(target: "event_gateway::kafka", %error, reason, "kafka client error")
            }
        }
    }
}
