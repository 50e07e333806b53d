//! The request-head deadline on the public listener: a client must finish sending a request
//! head within `server.request_head_timeout_ms` of connecting, or of the end of its previous
//! response on a kept-alive connection; otherwise the connection is closed.
//!
//! Pingora has no such deadline. Reading a first request head, each read waits up to 60 s, so
//! a client sending a byte every 59 s (slowloris) holds its connection for as long as it likes;
//! between keep-alive requests it waits for ever, so idle connections are never closed. Each
//! costs a socket and a buffer; enough of them exhaust file descriptors.
//!
//! [`Guarded`] wraps the Pingora application and every accepted HTTP/1 stream in a
//! [`HeadDeadline`], armed at accept. The proxy disarms it once a head has been read
//! (`request_filter`; for an identity endpoint, once its body has been read too) and re-arms it
//! when the response is done (`logging`). Proxied bodies and upstream time keep Pingora's own
//! timeouts. HTTP/2 (ALPN `h2`) is not wrapped: one connection carries
//! many requests at once, with its own flow control.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::edge::lifetime::{Gate, Lifetime};
use crate::edge::pingora_errors::{self, Replacing};

/// A stream whose reads fail with `TimedOut` once an armed deadline has passed.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    start: Instant,
    /// Milliseconds after `start` by which the head must be complete, plus one; 0 = disarmed.
    /// Atomic because the proxy reaches the stream through a shared reference.
    due: AtomicU64,
    sleep: Pin<Box<Sleep>>,
    /// The token's end, while a long-lived response of a verified identity is under way
    /// (`edge::lifetime`); locked only to arm and drop it, polled through `get_mut`.
    lifetime: Mutex<Option<Box<Lifetime>>>,
    /// Pingora's bare 400 for a head it refused, being replaced by our problem+json
    /// (`edge::pingora_errors`); everything Pingora writes after it is dropped.
    replacing: Option<Box<Replacing>>,
}

impl HeadDeadline {
    /// Wraps `inner`, armed: the first head is due `timeout` from now.
    pub fn new(inner: Stream, timeout: Duration) -> Self {
        let start = Instant::now();
        let d = Self {
            inner,
            timeout,
            start,
            due: AtomicU64::new(0),
            sleep: Box::pin(tokio::time::sleep_until(start + timeout)),
            lifetime: Mutex::new(None),
            replacing: None,
        };
        d.arm();
        d
    }

    /// The next head is due `timeout` from now.
    pub fn arm(&self) {
        let due = self.start.elapsed() + self.timeout;
        let ms = u64::try_from(due.as_millis()).unwrap_or(u64::MAX - 1);
        self.due.store(ms + 1, Ordering::Relaxed);
    }

    /// A head has been read: no deadline until the next [`Self::arm`].
    pub fn disarm(&self) {
        self.due.store(0, Ordering::Relaxed);
    }

    /// A long-lived response starts: the connection ends with its token (`edge::lifetime`).
    pub fn live_until(&self, lifetime: Lifetime) {
        *self.lifetime.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(lifetime));
    }

    /// The response is done: its token no longer bounds the connection.
    pub fn end_of_life(&self) {
        let mut l = self.lifetime.lock().unwrap_or_else(PoisonError::into_inner);
        if l.is_some() {
            *l = None;
        }
    }

    /// The armed lifetime's verdict on the next read or write.
    fn gate(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Error>> {
        let lifetime = self
            .lifetime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()?;
        match lifetime.poll_gate(cx, &mut self.inner) {
            Gate::Open => None,
            Gate::Pending => Some(Poll::Pending),
            Gate::Closed => Some(Poll::Ready(lifetime.error())),
        }
    }

    /// The deadline wrapped around a session's stream, if there is one.
    pub fn of(stream: Option<&Stream>) -> Option<&Self> {
        stream.and_then(|s| s.as_ref().as_any().downcast_ref::<Self>())
    }
}

impl HeadDeadline {
    /// While Pingora's bare 400 is being replaced (or when `buf` starts one: written while a
    /// head is still due, so no gateway code has answered), our response goes out instead and
    /// `buf` is taken as written; `None` for every other write.
    fn replace_pingoras(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            if self.due.load(Ordering::Relaxed) == 0 {
                return None;
            }
            self.replacing = Some(Box::new(pingora_errors::replacement(buf)?));
        }
        let replacing = self.replacing.as_mut()?;
        Some(match replacing.poll_send(cx, &mut self.inner) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        })
    }

    /// Follows the written bytes through the armed lifetime's framing.
    fn wrote(&mut self, bytes: &[u8]) {
        if let Some(l) = self
            .lifetime
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            l.wrote(bytes);
        }
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(gate) = this.gate(cx) {
            return gate.map(Err);
        }
        let due = this.due.load(Ordering::Relaxed);
        if due != 0 {
            let at = this.start + Duration::from_millis(due - 1);
            // Re-arming only ever moves the deadline later, so the timer is left where it is
            // and moved only when it fires before the deadline now in force: no timer-wheel
            // update (a lock in tokio's driver) per request, one early wake-up per re-arm at most.
            if this.sleep.deadline() > at {
                this.sleep.as_mut().reset(at);
            }
            while this.sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() < at {
                    this.sleep.as_mut().reset(at);
                    continue;
                }
                // Once: a timed-out stream is not read again.
                this.due.store(0, Ordering::Relaxed);
                crate::ops::metrics::HEAD_TIMEOUTS.inc();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete in time",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(gate) = this.gate(cx) {
            return gate.map(Err);
        }
        if let Some(replaced) = this.replace_pingoras(cx, buf) {
            return replaced;
        }
        let wrote = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = wrote {
            this.wrote(&buf[..n]);
        }
        wrote
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(gate) = this.gate(cx) {
            return gate.map(Err);
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            let total = bufs.iter().map(|b| b.len()).sum();
            if let Some(replaced) = this.replace_pingoras(cx, first) {
                return replaced.map_ok(|_| total);
            }
        }
        let wrote = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = wrote {
            for b in bufs {
                let part = n.min(b.len());
                this.wrote(&b[..part]);
                n -= part;
                if n == 0 {
                    break;
                }
            }
        }
        wrote
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A Pingora application whose HTTP/1 connections get a [`HeadDeadline`].
#[derive(Debug)]
pub struct Guarded<A> {
    app: Arc<A>,
    timeout: Duration,
}

impl<A> Guarded<A> {
    pub fn new(app: A, timeout: Duration) -> Self {
        Self {
            app: Arc::new(app),
            timeout,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already wrapped (and re-armed by the proxy).
        let wrapped = stream.as_ref().as_any().is::<HeadDeadline>()
            || matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = if wrapped {
            stream
        } else {
            Box::new(HeadDeadline::new(stream, self.timeout))
        };
        ServerApp::process_new(&self.app, stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(timeout: Duration) -> (HeadDeadline, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(server));
        (HeadDeadline::new(stream, timeout), client)
    }

    #[tokio::test]
    async fn an_armed_deadline_fails_a_read_that_waits_past_it() {
        let (mut d, mut client) = pair(Duration::from_millis(100)).await;
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).await.unwrap(), 3);
        let t = Instant::now();
        let e = d.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn re_arming_moves_the_deadline_later_even_though_the_timer_is_not_moved_at_once() {
        let (mut d, mut client) = pair(Duration::from_millis(150)).await;
        // A head read 100 ms in, then re-armed: the next head is due 150 ms from then, not at
        // the first deadline (which the timer still holds).
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).await.unwrap(), 1);
        d.arm();
        let t = Instant::now();
        let e = d.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            t.elapsed() >= Duration::from_millis(140),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn a_disarmed_deadline_lets_reads_wait() {
        let (mut d, mut client) = pair(Duration::from_millis(50)).await;
        d.disarm();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let mut buf = [0u8; 8];
        assert_eq!(d.read(&mut buf).await.unwrap(), 1);
        // re-armed: the next read has its own, fresh deadline
        d.arm();
        let e = d.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
