//! Watching the files the gateway reloads while it runs (event types and schemas, API keys
//! and the JWKS, the listener's certificate): notify's poll watcher, which stats and hashes
//! each file once per interval. Polling rather than inotify: it sees files replaced by
//! rename, as editors, Kubernetes ConfigMap and Secret updates and cert-manager do, where an
//! inotify watch on the file itself is lost.
use std::path::PathBuf;
use std::time::Duration;

/// Calls `on_change` whenever one of `files` changes (contents compared). Returns None, after
/// logging why, when there is nothing to watch or the watcher cannot start; `what` names the
/// files in those logs. The watching stops when the returned watcher is dropped.
pub fn poll(
    files: &[PathBuf],
    interval: Duration,
    what: &'static str,
    on_change: impl Fn() + Send + 'static,
) -> Option<notify::PollWatcher> {
    use notify::Watcher as _;
    if files.is_empty() {
        return None;
    }
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            on_change();
        }
    };
    let config = notify::Config::default()
        .with_poll_interval(interval)
        .with_compare_contents(true);
    let mut watcher = match notify::PollWatcher::new(handler, config) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, what, "cannot watch files; changes need a restart");
            return None;
        }
    };
    for f in files {
        if let Err(e) = watcher.watch(f, notify::RecursiveMode::NonRecursive) {
            tracing::error!(file = %f.display(), error = %e, what, "cannot watch a file");
        }
    }
    Some(watcher)
}
