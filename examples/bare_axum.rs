//! Benchmark ceiling: a bare axum server that reads the same request bodies the gateway gets
//! and answers a small JSON, on the same runtime settings. What it serves per second is the
//! HTTP ceiling for our stack on this machine. `bare_axum ADDR`
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18091".into());
    let app = Router::new().fallback(post(|body: Bytes| async move {
        (
            [("content-type", "application/json")],
            format!(r#"{{"ok":true,"len":{}}}"#, body.len()),
        )
    }));
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    axum::serve(listener, app).await.unwrap();
}
