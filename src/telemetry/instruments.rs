//! Conventions every instrument follows, wherever it is built: latency buckets and the bound on
//! client-chosen label values (how many, and how long). A leaf module (it imports nothing of the crate), so the core, the
//! sinks and the transports share them without depending on the registry wiring in
//! [`super::metrics`].
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use opentelemetry::StringValue;

/// Latency buckets in seconds, fine enough to tell 100 µs from 250 µs.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct values one client-chosen label may take before further values read `other`.
pub const LABEL_CARDINALITY_CAP: usize = 100;

/// Longer client-chosen values read `other` and take no place in the cap: the cap bounds how
/// many values a label has, this bounds how large each is (so one scrape stays small).
pub const LABEL_MAX_LEN: usize = 128;

/// The HTTP method as a label: the standard methods as they are, anything else `other`
/// (a client may send any token as a method).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Remembers the first `cap` values seen; later new values map to `other`. A read lock on the
/// hot path; the write lock only while the set is still filling. A label is a shared
/// `Arc<str>`: taking one allocates nothing (#26).
pub struct LabelCap {
    cap: usize,
    seen: RwLock<HashSet<Arc<str>>>,
}

impl LabelCap {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: RwLock::new(HashSet::new()),
        }
    }

    pub fn label(&self, value: &str) -> StringValue {
        const OTHER: &str = "other";
        if value.len() > LABEL_MAX_LEN {
            return OTHER.into();
        }
        if let Some(v) = self.seen.read().expect("label lock").get(value) {
            return Arc::clone(v).into();
        }
        let mut seen = self.seen.write().expect("label lock");
        if let Some(v) = seen.get(value) {
            return Arc::clone(v).into();
        }
        if seen.len() < self.cap {
            let v: Arc<str> = Arc::from(value);
            seen.insert(Arc::clone(&v));
            v.into()
        } else {
            OTHER.into()
        }
    }
}

impl Default for LabelCap {
    fn default() -> Self {
        Self::new(LABEL_CARDINALITY_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_bounds_distinct_values() {
        let cap = LabelCap::new(3);
        assert_eq!(cap.label("a").as_str(), "a");
        assert_eq!(cap.label("b").as_str(), "b");
        assert_eq!(cap.label("c").as_str(), "c");
        assert_eq!(cap.label("d").as_str(), "other");
        assert_eq!(cap.label("a").as_str(), "a");
        assert_eq!(cap.label("e").as_str(), "other");
    }

    #[test]
    fn long_values_read_other_without_taking_a_place() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.label(&"x".repeat(LABEL_MAX_LEN + 1)).as_str(), "other");
        assert_eq!(
            cap.label(&"y".repeat(LABEL_MAX_LEN)).as_str(),
            "y".repeat(LABEL_MAX_LEN)
        );
        assert_eq!(cap.label("a").as_str(), "a");
        assert_eq!(method_label(&"BREW".parse().unwrap()), "other");
        assert_eq!(method_label(&http::Method::POST), "POST");
    }
}
