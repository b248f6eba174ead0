//! The `event-gateway` binary: parses the command line, loads the configuration, and runs
//! [`event_gateway::serve`] until SIGTERM or SIGINT.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use event_gateway::Config;

/// Takes events in over gRPC and JSON REST and puts them into Apache Kafka.
///
/// Settings come from the config file, overridden by GATEWAY_* environment variables
/// (for example GATEWAY_SERVER_ADDRESS, GATEWAY_KAFKA_BROKERS=host1:9092,host2:9092,
/// GATEWAY_RATE_LIMIT_REQUESTS_PER_SECOND). With no kafka.brokers, events go to a local
/// log under storage.data_dir.
#[derive(Parser, Debug)]
#[command(name = "event-gateway", version, about, long_about)]
struct Cli {
    /// YAML config file. Default: ./config.yaml when it exists, else built-in defaults.
    #[arg(long, short = 'c', value_name = "PATH", env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Prints the events of a local log or spool directory as CloudEvents JSON lines, oldest
    /// first (default: storage.data_dir, the local log). Damaged records are skipped.
    Log {
        /// The directory; `<storage.data_dir>/spool` for the spool.
        dir: Option<PathBuf>,
    },
    /// Loads and checks the whole configuration, the files it names included (types,
    /// schemas, API keys, JWKS, certificates), without binding or connecting; prints the
    /// effective configuration without secrets. Exits 0, or 2 with start-up's message.
    Check,
}

/// jemalloc rather than glibc's malloc: after a burst of hostile requests (tests/memory.rs),
/// glibc kept ~200 MiB of small freed blocks in its per-thread arenas for good (RSS 227 MiB
/// from an idle 33 MiB, a minute later); jemalloc's background threads give unused pages back
/// to the system within seconds (`dirty_decay_ms`, 10 s by default).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background purging threads: without them, freed pages are only given
/// back when some thread allocates again, which an idle gateway does not.
fn return_freed_memory() {
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("event-gateway: jemalloc background threads not started: {e}");
    }
}

/// `event-gateway check`: like `nginx -t`, for a change to be checked before it rolls out.
fn check(config: &Config) -> ExitCode {
    if let Err(e) = event_gateway::server::check(config) {
        eprintln!("event-gateway: {e}");
        return ExitCode::from(2);
    }
    match serde_yaml::to_string(&config.redacted()) {
        Ok(text) => {
            print!("{text}");
            eprintln!("event-gateway: the configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("event-gateway: cannot print the configuration: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code when the shutdown flush left events undelivered (2 is a configuration error).
const UNDELIVERED_EXIT: u8 = 3;

fn main() -> ExitCode {
    return_freed_memory();
    let cli = Cli::parse();
    let file = cli.config.or_else(|| {
        let default = PathBuf::from("config.yaml");
        default.exists().then_some(default)
    });
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("event-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Log { dir }) => return print_log(&dir.unwrap_or(config.storage.data_dir)),
        Some(Command::Check) => return check(&config),
        None => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Inside the runtime: the OTLP exporters and their export queue live on it (before this,
    // turning on export crashed the gateway at start: "there is no reactor running").
    let tracer_provider = {
        let _runtime = runtime.enter();
        event_gateway::telemetry::init(&config.logging)
    };
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&config.server.address).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(address = %config.server.address, error = %e, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        match event_gateway::serve(config, listener, shutdown_signal()).await {
            Ok(report) => {
                if report.spool_left > 0 {
                    tracing::info!(
                        records = report.spool_left,
                        "spooled records not yet forwarded stay on disk for the next start"
                    );
                }
                if report.undelivered > 0 {
                    // Never acknowledged (their clients got an error or no answer), so no
                    // promise was broken; still, a supervisor must see that events died here.
                    tracing::error!(
                        undelivered = report.undelivered,
                        "{} events were not delivered before exit (never acknowledged); exit code {UNDELIVERED_EXIT}",
                        report.undelivered
                    );
                    return ExitCode::from(UNDELIVERED_EXIT);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "event gateway failed");
                if e.is_configuration() {
                    eprintln!("event-gateway: {e}");
                    ExitCode::from(2)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    });
    // Export the spans still queued before the process ends: the export task runs on the
    // runtime, so the runtime runs while the provider waits for it.
    runtime.block_on(async move {
        let _ = tokio::task::spawn_blocking(move || tracer_provider.shutdown()).await;
    });
    code
}

fn print_log(dir: &std::path::Path) -> ExitCode {
    use std::io::Write as _;
    match event_gateway::spool::read_events(dir) {
        Ok(events) => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for (_, json) in events {
                if out
                    .write_all(&json)
                    .and_then(|()| out.write_all(b"\n"))
                    .is_err()
                {
                    return ExitCode::FAILURE; // stdout closed (a pipe to `head`)
                }
            }
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("event-gateway: cannot read {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
