//! What every target shares: validation with the default limits.
use event_gateway::core::validate::{self, Context, Incoming, Limits};

pub const LIMITS: Limits = Limits {
    max_event_size: 512 * 1024,
    max_batch_events: 1000,
    max_data_depth: 31,
    max_number_length: 100,
};

/// Runs every rule on `incoming`; a panic anywhere is the finding.
pub fn check(incoming: Incoming) {
    let ctx = Context::limits_only(&LIMITS);
    if let Ok(checked) = validate::check_event(incoming, "event", &ctx, chrono::Utc::now()) {
        // What the sinks would write must serialize.
        serde_json::to_vec(&checked.event).expect("a checked event serializes");
    }
}
