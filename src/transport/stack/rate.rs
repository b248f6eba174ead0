//! The per-client token bucket (governor): a principal's key, or the client address's, each
//! bucket `rate_limit.requests_per_second` with `rate_limit.burst`. The keyed limiter is
//! bounded: idle buckets are dropped, and past `LIMITER_MAX_KEYS` the oldest go first, so a
//! flood of distinct keys cannot grow memory.
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::client::ClientKey;
use crate::core::auth::Principal;
use crate::core::error::Error;

/// How often idle rate-limit buckets are forgotten, bounding the limiter's memory.
pub(super) const LIMITER_GC_INTERVAL: Duration = Duration::from_secs(60);

/// How many buckets the limiter holds before it forgets the full ones at once, instead of
/// waiting for the next minute's sweep. A full bucket is the same as no bucket, so
/// forgetting it changes no answer; a bucket is not full only for `burst / rate` seconds
/// after its last request, so what stays is bounded by the request rate the gateway can
/// take times that refill time, whatever number of distinct keys a flood brings.
const LIMITER_MAX_KEYS: usize = 100_000;

/// Requests between two checks of the limiter's size (`len()` visits every shard).
const LIMITER_SIZE_CHECK_EVERY: u64 = 1024;

pub(super) struct RateLimit {
    limiter: DefaultKeyedRateLimiter<ClientKey>,
    pub(super) rps: u32,
    pub(super) burst: u32,
    checks: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    /// Drops the buckets that are full again (their clients idle): run every
    /// `LIMITER_GC_INTERVAL`.
    pub(super) fn forget_idle(&self) {
        self.limiter.retain_recent();
    }

    pub(super) fn new(rps: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: RateLimiter::dashmap(Quota::per_second(rps).allow_burst(burst)),
            rps: rps.get(),
            burst: burst.get(),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Keeps the number of buckets bounded (see [`LIMITER_MAX_KEYS`]).
    fn bound(&self) {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n.is_multiple_of(LIMITER_SIZE_CHECK_EVERY) && self.limiter.len() > LIMITER_MAX_KEYS {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is there.
    pub(super) fn check(&self, key: &ClientKey) -> Result<(), Error> {
        self.bound();
        self.limiter
            .check_key(key)
            .map_err(|not_until| Error::RateLimited {
                limit: format!(
                    "{} requests/s, burst {} per client (rate_limit.*)",
                    self.rps, self.burst
                ),
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            })
    }
}

/// A token for `key` from the principal's own bucket when its API key has one, else from
/// the shared per-client limiter.
pub(super) fn take_token(
    rl: &RateLimit,
    principal: Option<&Principal>,
    key: &ClientKey,
) -> Result<(), Error> {
    match principal.and_then(|p| p.grants.rate_limit.as_ref()) {
        Some(own) => own.limiter.check().map_err(|not_until| Error::RateLimited {
            limit: format!(
                "{} requests/s, burst {} for this API key (its rate_limit)",
                own.requests_per_second, own.burst_size
            ),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        }),
        None => rl.check(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    /// A flood of 1,000,000 distinct client keys (one request each, as rotating forwarded
    /// addresses would bring) leaves at most LIMITER_MAX_KEYS buckets plus one check
    /// interval, and the process grows by less than 64 MiB for it (unbounded, the same flood
    /// holds a million buckets).
    #[test]
    fn a_million_distinct_keys_keep_the_limiter_bounded() {
        // RSS is the whole process's: the test runs again in a child process of its own, so
        // what other tests allocate meanwhile is not counted against the limiter.
        const CHILD: &str = "EVENT_GATEWAY_RATE_RSS_CHILD";
        if std::env::var_os(CHILD).is_none() {
            let name = format!(
                "{}::a_million_distinct_keys_keep_the_limiter_bounded",
                module_path!().split_once("::").expect("in the crate").1
            );
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", &name, "--test-threads", "1"])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        let rl = RateLimit::new(
            NonZeroU32::new(10_000).unwrap(),
            NonZeroU32::new(20_000).unwrap(),
        );
        let before = rss_kib();
        let mut most = 0;
        for i in 0..1_000_000u32 {
            let key = ClientKey::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i).into());
            assert!(rl.check(&key).is_ok());
            if i % 4096 == 0 {
                most = most.max(rl.limiter.len());
            }
        }
        most = most.max(rl.limiter.len());
        let grown_mib = rss_kib().saturating_sub(before) / 1024;
        assert!(
            most <= LIMITER_MAX_KEYS + LIMITER_SIZE_CHECK_EVERY as usize,
            "{most} buckets"
        );
        assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    }
}
