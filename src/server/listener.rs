//! The listener: the accept loop, the connection limits (`server.max_connections`, per
//! peer), hyper's connection settings, and one connection's life (the first byte and the
//! first request within `server.read_timeout`, the TLS handshake, the write timeout, the
//! graceful-shutdown watcher, the close in stages).
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_io_timeout::TimeoutStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::App;
use super::linger::Lingering;
use crate::config::Config;
use crate::telemetry::throttle::LogThrottle;
use crate::transport::stack::PeerIdentity;
use crate::transport::tls;

/// `server.max_connections` and `server.max_connections_per_peer`: open connections in all
/// and by peer address. A map of counts under a mutex, touched twice per connection (accept
/// and close); entries leave the map at zero, so it holds at most one entry per open
/// connection, whatever number of addresses a flood comes from.
struct ConnectionLimits {
    max: usize,
    per_peer: usize,
    open: Arc<std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>>,
    /// Refusals are logged once per 10 s at most, with the count since the last line.
    logged: LogThrottle,
}

/// A connection's place in [`ConnectionLimits`], given back on drop.
struct ConnectionSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimits {
    fn new(max: usize, per_peer: usize) -> Self {
        Self {
            max,
            per_peer,
            open: Arc::default(),
            logged: LogThrottle::new(Duration::from_secs(10)),
        }
    }

    /// A slot for a connection from `ip`, or the limit it is over (`total`, `per_peer`).
    fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return Err("total");
        }
        let from_peer = open.1.get(&ip).copied().unwrap_or(0);
        if self.per_peer > 0 && from_peer >= self.per_peer {
            return Err("per_peer");
        }
        open.0 += 1;
        *open.1.entry(ip).or_insert(0) += 1;
        Ok(ConnectionSlot {
            ip,
            open: self.open.clone(),
        })
    }

    fn log_refusal(&self, peer: SocketAddr) {
        if let Some(refused) = self.logged.due() {
            tracing::warn!(
                %peer,
                refused,
                max_connections = self.max,
                max_connections_per_peer = self.per_peer,
                "connections refused at server.max_connections / server.max_connections_per_peer (count since the last such line)"
            );
        }
    }
}

/// hyper's connection settings from `server.*`.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // A client gets `read_timeout` to send a request's headers, so slow clients cannot hold
    // connections (hyper needs the timer for this to take effect at all).
    let (h1, h2) = (&config.server.http1, &config.server.http2);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.read_timeout)
        .keep_alive(true)
        .max_headers(h1.max_headers)
        .max_buf_size(h1.max_head_size.as_u64() as usize);
    // HTTP/2 (gRPC): pings find dead peers; an idle connection is closed after idle_timeout
    // without an answered ping. The limits are checked by the config (u32 fits).
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.server.idle_timeout / 2))
        .keep_alive_timeout(config.server.idle_timeout / 2)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size.as_u64() as u32)
        .max_frame_size(h2.max_frame_size.as_u64() as u32)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams);
    b
}

/// Accepts connections until `accepting` is cancelled; each is served on its own task,
/// watched by `graceful` so the drain can wait for it.
pub(super) async fn accept_loop(
    listener: &TcpListener,
    accepting: &CancellationToken,
    app: &App,
    config: &Config,
    graceful: &GracefulShutdown,
) {
    let conn = Connection {
        builder: connection_builder(config),
        router: app.router.clone(),
        tls: app.tls.clone(),
        open: app.http_metrics.active_connections.clone(),
        read_timeout: config.server.read_timeout,
        write_timeout: config.server.write_timeout,
    };
    let limits = ConnectionLimits::new(
        config.server.max_connections,
        config.server.max_connections_per_peer,
    );
    loop {
        let (stream, peer) = tokio::select! {
            _ = accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: log, and keep serving the
                    // connections we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                // Closed at once: the connections already open keep their share.
                app.http_metrics
                    .refused_connections
                    .add(1, &[opentelemetry::KeyValue::new("reason", reason)]);
                limits.log_refusal(peer);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        conn.open.add(1, &[]);
        let conn = conn.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let open = conn.open.clone();
            conn.serve(stream, peer, watcher).await;
            open.add(-1, &[]);
        });
    }
}

/// What every connection is served with.
#[derive(Clone)]
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    tls: Option<Arc<tls::Tls>>,
    /// `active_connections`.
    open: opentelemetry::metrics::UpDownCounter<i64>,
    read_timeout: Duration,
    write_timeout: Duration,
}

/// A connection's stream once the write timeout is on it, and TLS when configured.
type Io = Either<Tcp, tokio_rustls::server::TlsStream<Tcp>>;

/// The TCP stream with its write timeout, closed in stages ([`Lingering`]).
type Tcp = Lingering<Pin<Box<TimeoutStream<TcpStream>>>>;

impl Connection {
    /// One connection, from its first byte to its end.
    async fn serve(self, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
        // hyper's header timer starts with the first byte; a client that connects and never
        // sends one would hold the connection for ever (hyperium/hyper#3962). peek, not
        // readable(): readiness can be reported spuriously, a byte cannot.
        let connected = tokio::time::Instant::now();
        let mut first = [0u8; 1];
        if !matches!(
            tokio::time::timeout(self.read_timeout, stream.peek(&mut first)).await,
            Ok(Ok(n)) if n > 0
        ) {
            tracing::debug!(%peer, "closed a connection that sent nothing");
            return;
        }
        let Some((io, identity)) = self.handshake(stream, peer).await else {
            return;
        };
        self.run(io, identity, peer, watcher, connected).await;
    }

    /// The write timeout, then TLS when configured: the handshake gets `read_timeout`, like
    /// request headers do. None: the handshake failed or timed out (logged).
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Io, Option<PeerIdentity>)> {
        // hyper has no write timeout: a write that makes no progress for `write_timeout` (a
        // client that stopped reading its replies) fails, and the connection with it,
        // instead of holding its buffers for ever.
        let mut io = TimeoutStream::new(stream);
        io.set_write_timeout(Some(self.write_timeout));
        let io = Lingering::new(Box::pin(io));
        let Some(tls) = &self.tls else {
            return Some((Either::Left(io), None));
        };
        match tokio::time::timeout(self.read_timeout, tls.acceptor().accept(io)).await {
            Ok(Ok(s)) => {
                let identity = tls::peer_identity(s.get_ref().1);
                Some((Either::Right(s), identity))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// hyper serves the connection (HTTP/1 or h2c, upgrades for the WebSocket) until it ends
    /// or the drain closes it.
    async fn run(
        self,
        io: Io,
        identity: Option<PeerIdentity>,
        peer: SocketAddr,
        watcher: Watcher,
        connected: tokio::time::Instant,
    ) {
        // A connection must bring its first request within `read_timeout` of being accepted.
        // hyper's header timer is HTTP/1's; an HTTP/2 connection that sends part of the
        // preface, or the preface and SETTINGS and no request, would otherwise stay open
        // until keep-alive pings time out (or for ever).
        let first_request = Arc::new(tokio::sync::Notify::new());
        let arrived = first_request.clone();
        let svc = self
            .router
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                arrived.notify_one();
                req.extensions_mut().insert(ConnectInfo(peer));
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                req.map(axum::body::Body::new)
            });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(svc))
            .into_owned();
        let conn = watcher.watch(conn);
        tokio::pin!(conn);
        let ended = tokio::select! {
            ended = &mut conn => Some(ended),
            () = first_request.notified() => Some(conn.await),
            () = tokio::time::sleep_until(connected + self.read_timeout) => None,
        };
        match ended {
            Some(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
            Some(Ok(())) => {}
            None => tracing::debug!(
                %peer,
                "closed a connection that sent no request within server.read_timeout"
            ),
        }
    }
}
