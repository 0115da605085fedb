//! The HTTP/1.1 server: accepts connections with the limits a public server needs against
//! slow or silent clients, and serves the router on each.
//!
//! - at most `max_connections` open at once; beyond that new ones wait in the kernel's
//!   accept queue until one closes;
//! - a request's head must arrive within `header_read_timeout` (slow-header clients);
//! - a connection on which no byte moved either way for `idle_timeout` is closed after its
//!   request in flight, if any (silent and idle keep-alive clients); live streams send a
//!   heartbeat well within it;
//! - the handler's time, body included, is bounded by the router's request timeout;
//! - on shutdown, connections finish the request in hand and close (WebSockets send their
//!   `close` message); those still open after the grace period are dropped.
//!
//! Each request carries its peer's address as [`ConnectInfo`], the router as [`Dispatch`]
//! (a WebSocket connection sends its commands through it), and its connection's
//! [`ConnectionSlot`]: a connection upgraded to a WebSocket keeps its slot until it closes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The router serving the connection, so that a request can be run as HTTP would run it.
#[derive(Clone)]
pub struct Dispatch(pub Router);

/// A connection's place among the `max_connections`; held as long as a clone of it lives.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// The server's limits (see the module's docs).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// How long shutdown waits for open connections.
    pub grace: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then drains within the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let slot = ConnectionSlot(Arc::new(permit));
        let held = slot.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut request: hyper::Request<Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(ConnectInfo(peer));
                extensions.insert(Dispatch(router.clone()));
                extensions.insert(slot.clone());
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        ));
        let activity = Activity::new();
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let connection = http.serve_connection(io, service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = held;
            tokio::pin!(connection);
            let mut closing = false;
            loop {
                let idle_check = tokio::time::sleep(limits.idle_timeout / 4);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, %peer, "connection ended with an error");
                        }
                        break;
                    }
                    () = shutdown.cancelled(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    () = idle_check, if !closing => {
                        if activity.idle_for() >= limits.idle_timeout {
                            tracing::debug!(%peer, "closing an idle connection");
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    // Connections upgraded to WebSockets left the tracker but hold their slot until they have
    // said goodbye: every slot back means every connection closed.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let drained = async {
        connections.wait().await;
        let _ = permits.acquire_many(all).await;
    };
    if tokio::time::timeout(limits.grace, drained).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace = ?limits.grace,
            "connections still open after the grace period are dropped"
        );
    }
}

/// When a connection last moved a byte.
#[derive(Debug, Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A TCP stream that records when bytes last moved.
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
