//! Clients from another ecosystem: Python's grpcio driven only by server reflection (as
//! grpcurl is) lists the services and calls all three RPCs. The interpreter comes from
//! `$EVENT_GATEWAY_PYTHON`, the virtualenv scripts/test prepares with grpcio from PyPI.
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_driven_python_client_calls_every_rpc() {
    let Some(py) = require(Tool::Python) else {
        return;
    };
    let gw = TestGateway::local().await;
    let addr = gw.addr.to_string();
    let out = tokio::process::Command::new(&py)
        .args(["tests/py/reflection_client.py", &addr])
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"storedCount\": 2"), "{stdout}");
    // Two calls stored three events, read back from the local log.
    let lines = gw.log_lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["subject"], "user-456");
}
