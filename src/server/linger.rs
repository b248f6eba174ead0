//! A connection's close in stages (RFC 9112 §9.6, "lingering close"): when hyper shuts a
//! connection down, its write side is closed first (a FIN behind the last reply), then what
//! the client still sends is read and thrown away until the client closes too, [`LINGER`]
//! passes or [`LINGER_MAX_BYTES`] have come, and only then is the socket closed.
//!
//! Why: a socket closed with unread bytes in its receive buffer sends a TCP reset, and a
//! reset can throw away the server's last frames before the client reads them (the kernel
//! drops what it had not yet sent). A gRPC client still writing into an `IngestStream` when
//! the drain ends it was told "broken pipe" instead of UNAVAILABLE with the stream's
//! results (RFC 9112 §9.6 warns of the same for an HTTP/1 reply). Neither hyper nor tokio
//! does this (no crate found that does: nginx calls it `lingering_close`), so it is here, a
//! wrapper around the TCP stream below TLS.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a closed connection keeps reading after its FIN: time for the client to read the
/// last reply and close (one round trip and its own close, usually milliseconds). It holds
/// the connection's slot in `server.max_connections` that long at most, and counts within
/// `shutdown.drain_timeout` in a drain.
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// How much a closed connection reads at most before it closes anyway. A client that keeps
/// to HTTP/2 flow control has at most the connection's window in flight (hyper's: 1 MiB);
/// one that floods past that (h2 cut it off with a GOAWAY, say) gets the reset, as before.
pub(super) const LINGER_MAX_BYTES: usize = 4 << 20;

/// An I/O stream whose `poll_shutdown` closes in stages (see the module's comment).
pub(super) struct Lingering<T> {
    inner: T,
    /// Set once the write side is shut: the linger's deadline.
    lingering: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read and dropped since.
    discarded: usize,
}

impl<T> Lingering<T> {
    pub(super) fn new(inner: T) -> Self {
        Self {
            inner,
            lingering: None,
            discarded: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.lingering = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let deadline = this.lingering.as_mut().expect("set above");
        // A fixed scratch buffer: what the client sends now is discarded, so memory does not
        // grow with it; the loop ends at the client's close, an error, the deadline or the
        // byte cap (and tokio's budget makes a flood yield to other tasks in between).
        let mut scratch = [0u8; 16 * 1024];
        loop {
            if this.discarded > LINGER_MAX_BYTES || deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Ok(()) => this.discarded += buf.filled().len(),
                Err(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A client's TCP stream and the server's end of it, wrapped.
    async fn connected() -> (TcpStream, Lingering<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Lingering::new(server))
    }

    /// The client's bytes sent around the server's last reply are read away, so the server's
    /// close is a FIN behind the reply and never a reset: the client reads the reply, sees
    /// the end, and can still write until it closes itself (a reset would fail those
    /// writes). The shutdown returns once the client closes, long before the deadline.
    #[tokio::test]
    async fn a_close_with_unread_bytes_sends_the_reply_then_a_fin_not_a_reset() {
        let (mut client, mut server) = connected().await;
        // Unread bytes in the server's receive buffer: without the linger, its close resets.
        client.write_all(&[b'x'; 1024]).await.unwrap();
        let close = tokio::spawn(async move {
            server.write_all(b"the last reply").await.unwrap();
            let started = tokio::time::Instant::now();
            server.shutdown().await.unwrap();
            drop(server);
            started.elapsed()
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"the last reply");
        for i in 0..200 {
            if let Err(e) = client.write_all(&[b'y'; 1024]).await {
                panic!("write {i} after the server's close failed (a reset): {e}");
            }
            tokio::task::yield_now().await;
        }
        drop(client);
        let took = close.await.unwrap();
        assert!(
            took < LINGER,
            "the shutdown waited {took:?} for a client that closed"
        );
    }

    /// A client that keeps sending and never closes is let go once it has sent the cap, not
    /// held to the deadline (nor read for as long as it floods).
    #[tokio::test]
    async fn a_flooding_client_is_let_go_at_the_byte_cap() {
        let (mut client, mut server) = connected().await;
        let flood = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            while client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let started = tokio::time::Instant::now();
        server.shutdown().await.unwrap();
        let took = started.elapsed();
        assert!(server.discarded > LINGER_MAX_BYTES, "{}", server.discarded);
        assert!(took < LINGER, "a flood held the close for {took:?}");
        drop(server);
        // The server's close resets the flooding client: its writes end.
        assert!(flood.await.unwrap() > LINGER_MAX_BYTES);
    }

    /// A client that never closes holds the connection for the linger at most.
    #[tokio::test]
    async fn a_client_that_never_closes_is_let_go_at_the_deadline() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = Lingering::new(server);
        let started = tokio::time::Instant::now();
        server.shutdown().await.unwrap();
        let took = started.elapsed();
        assert!(took >= LINGER && took < LINGER * 2, "{took:?}");
        drop(client);
    }
}
