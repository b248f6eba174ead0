//! Log lines a flood could multiply (connections refused at the caps, refused credentials)
//! pass at most once per period, carrying the count of those held back, so that one client
//! cannot fill the disk with warnings. Metrics still count every occurrence; the log samples.
//! A mutex around (last line, count) rather than a crate: governor's limiter would decide
//! "now or not" but not count what it held back, which the line must say.
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence. `Some(n)` when a line is due now: `n` occurrences since the
    /// last line, this one included.
    pub fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 += 1;
        if state.0.is_some_and(|t| t.elapsed() < self.every) {
            return None;
        }
        let n = state.1;
        *state = (Some(Instant::now()), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_passes_the_rest_are_counted_into_the_next_line() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert_eq!(t.due(), Some(1));
        for _ in 0..99 {
            assert_eq!(t.due(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.due(), Some(100));
    }
}
