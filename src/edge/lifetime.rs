//! Long-lived connections end with their token (CONTRACT 13): an upgraded connection (a
//! WebSocket) or a streamed response (no `Content-Length`: SSE, chunked) opened with a verified
//! identity is closed when the token expires (`exp` + `leeway_secs`) or is revoked (sign-out
//! here, `scope=all`, or on another replica: the revocation snapshot), within a second.
//!
//! A [`Lifetime`] is armed on the downstream stream ([`crate::edge::deadline::HeadDeadline`],
//! the wrapper every HTTP/1 connection already has) when such a response starts, and dropped
//! when it is done: an ordinary request never has one, so it costs them nothing but a look at
//! the response head. Armed, it is polled on each read and write of the connection: one timer
//! (at the expiry) and one wake-up per revocation anywhere (`Revocations::news`), after which
//! the snapshot is read only if the revocation generation moved. Pingora keeps the downstream
//! read polled all along (the WebSocket's client half, or the idle probe of a streamed
//! response), so the timer is always heard. An HTTP/2 stream has no connection of its own to
//! wrap: there [`Lifetime::ended`] is armed on the h2 session (`end_response_when`, vendored
//! Pingora patch 3), which ends the stream with END_STREAM and leaves the connection open.
//!
//! The end is clean where the framing allows: the bytes written are followed through their
//! framing ([`Framing`], read off the response head as written), and at a frame boundary the gateway adds a WebSocket close frame
//! (1008, "token expired" / "token revoked") or the last chunk (`0\r\n\r\n`) before the FIN.
//! Mid-frame, or for a client that will not read within [`GRACE`], the connection is just
//! closed. Then every read and write fails, and Pingora ends the request and drops the
//! upstream connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::authn::Verified;
use crate::authn::revocation::Revocations;

/// Does this response outlive an ordinary request: an upgrade, or a body without a length
/// (streamed: SSE, chunked, close-delimited)?
pub fn is_long_lived(response: &pingora::http::ResponseHeader, method: &http::Method) -> bool {
    let status = response.status.as_u16();
    if status == 101 {
        return true;
    }
    !(response.status.is_informational()
        || status == 204
        || status == 304
        || method == http::Method::HEAD
        || response.headers.contains_key(http::header::CONTENT_LENGTH))
}

/// The cause of the read or write error an HTTP/1 connection ended by its token gets.
#[derive(Debug)]
struct Ended(Reason);

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Reason::Revoked => "the token was revoked",
            Reason::Expired => "the token expired",
        })
    }
}

impl std::error::Error for Ended {}

/// Did the proxy stop because the gateway ended the connection (HTTP/1) or stream (HTTP/2) with
/// its token? Then it is no failure: counted in the metric, not logged as an error.
pub fn ended_by_token(e: &pingora::Error) -> bool {
    let root = e.root_cause();
    if let Some(io) = root.downcast_ref::<io::Error>() {
        return io
            .get_ref()
            .is_some_and(<dyn std::error::Error + Send + Sync>::is::<Ended>);
    }
    root.downcast_ref::<pingora::Error>()
        .and_then(|e| e.context.as_ref())
        .is_some_and(|c| c.as_str() == pingora::protocols::http::v2::server::ENDED_BY_END_WHEN)
}

/// Longest the gateway tries to write its closing bytes to a client that is not reading.
pub const GRACE: Duration = Duration::from_secs(1);

/// Why a connection was ended (the `reason` label of `portcullis_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Expired,
    Revoked,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    /// The metric and the debug line of an end.
    fn count(self) {
        crate::ops::metrics::CONNECTIONS_CLOSED
            .with_label_values(&[self.as_str()])
            .inc();
        tracing::debug!(reason = self.as_str(), "long-lived connection ended");
    }

    fn close_frame(self) -> Vec<u8> {
        let reason = match self {
            Self::Expired => &b"token expired"[..],
            Self::Revoked => &b"token revoked"[..],
        };
        // FIN + close opcode, unmasked (server to client), 1008 policy violation.
        let mut f = vec![
            0x88,
            u8::try_from(2 + reason.len()).unwrap_or(125),
            0x03,
            0xf0,
        ];
        f.extend_from_slice(reason);
        f
    }
}

/// The response's bytes as written: its head, then its body framed as the head says (read from
/// the bytes themselves, so whatever Pingora made of the upstream's framing is what is followed).
#[derive(Debug, Default)]
pub struct Framing {
    /// The head so far, until its blank line.
    head: Vec<u8>,
    body: Body,
}

#[derive(Debug, Default)]
enum Body {
    /// The head is not complete yet.
    #[default]
    Head,
    /// `101 Switching Protocols`, then WebSocket frames.
    WebSocket(Frames),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunks),
    /// Delimited by the close (or a head too large to follow): the FIN is the end.
    UntilClose,
}

/// A response head longer than this is not followed.
const MAX_HEAD: usize = 64 * 1024;

impl Framing {
    fn wrote(&mut self, bytes: &[u8]) {
        match &mut self.body {
            Body::Head => {
                let from = self.head.len().saturating_sub(3);
                self.head.extend_from_slice(bytes);
                let Some(end) = self.head[from..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| from + i + 4)
                else {
                    if self.head.len() > MAX_HEAD {
                        self.body = Body::UntilClose;
                        self.head = Vec::new();
                    }
                    return;
                };
                self.body = Self::body_of(&self.head[..end]);
                let rest = self.head.split_off(end);
                self.head = Vec::new();
                self.wrote(&rest);
            }
            Body::WebSocket(f) => f.wrote(bytes),
            Body::Chunked(c) => c.wrote(bytes),
            Body::UntilClose => {}
        }
    }

    /// The body's framing by its head: the status line and `Transfer-Encoding`.
    fn body_of(head: &[u8]) -> Body {
        let mut lines = head.split(|&b| b == b'\n');
        let status = lines.next().unwrap_or_default();
        if status.split(|&b| b == b' ').nth(1) == Some(b"101") {
            return Body::WebSocket(Frames::default());
        }
        let chunked = lines.any(|line| {
            let line = line.to_ascii_lowercase();
            line.starts_with(b"transfer-encoding:") && line.windows(7).any(|w| w == b"chunked")
        });
        if chunked {
            Body::Chunked(Chunks::default())
        } else {
            Body::UntilClose
        }
    }

    /// What to write before the FIN, when the bytes so far end at a boundary.
    fn closing(&self, reason: Reason) -> Vec<u8> {
        match &self.body {
            Body::WebSocket(f) if f.at_boundary() => reason.close_frame(),
            Body::Chunked(c) if c.at_boundary() => b"0\r\n\r\n".to_vec(),
            _ => Vec::new(),
        }
    }
}

/// Server-to-client WebSocket frames (RFC 6455 section 5.2).
#[derive(Debug, Default)]
pub struct Frames {
    /// The frame header read so far (at most 14 bytes).
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl Frames {
    fn wrote(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.payload_left -= n as u64;
                rest = &rest[n..];
                continue;
            }
            self.header[self.have] = rest[0];
            self.have += 1;
            rest = &rest[1..];
            if let Some(len) = self.frame_len() {
                self.payload_left = len;
                self.have = 0;
            }
        }
    }

    /// The payload length once the whole header is in.
    fn frame_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let (ext, len7) = match self.header[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        Some(len7.unwrap_or_else(|| {
            self.header[2..2 + ext]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }))
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }
}

/// A chunked body (RFC 9112 section 7.1): size line, data, CRLF.
#[derive(Debug, Default)]
pub struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a size line: a boundary.
    #[default]
    Start,
    /// In a size line (digits, extensions) until its LF.
    Size {
        size: u64,
        digits: bool,
    },
    /// Chunk data still to come, then its CRLF.
    Data(u64),
    Crlf(u8),
    /// The last chunk was written: nothing to add.
    Last,
}

impl Chunks {
    fn wrote(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some((&b, tail)) = rest.split_first() {
            self.state = match self.state {
                ChunkState::Last => return,
                ChunkState::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    rest = &rest[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::Crlf(2)
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::Crlf(1) => ChunkState::Start,
                ChunkState::Crlf(n) => ChunkState::Crlf(n - 1),
                ChunkState::Start => Self::size(0, true, b),
                ChunkState::Size { size, digits } => Self::size(size, digits, b),
            };
            rest = tail;
        }
    }

    fn size(size: u64, digits: bool, b: u8) -> ChunkState {
        match (b as char).to_digit(16) {
            Some(d) if digits => ChunkState::Size {
                size: size.saturating_mul(16).saturating_add(u64::from(d)),
                digits: true,
            },
            _ if b == b'\n' && size == 0 => ChunkState::Last,
            _ if b == b'\n' => ChunkState::Data(size),
            // `;` extensions, `\r`: the size is complete.
            _ => ChunkState::Size {
                size,
                digits: false,
            },
        }
    }

    fn at_boundary(&self) -> bool {
        self.state == ChunkState::Start
    }
}

/// What a verified connection is checked against.
#[derive(Debug)]
pub struct Lifetime {
    sleep: Pin<Box<Sleep>>,
    ends: Instant,
    revocation: Option<Revocable>,
    framing: Framing,
    state: State,
}

struct Revocable {
    revocations: Arc<Revocations>,
    jti: Option<uuid::Uuid>,
    user: Option<uuid::Uuid>,
    iat: Option<u64>,
    seen: u64,
    news: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Revocable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocable")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum State {
    Open,
    /// Writing `bytes[at..]`, then flushing and shutting down, until `give_up`.
    Ending {
        reason: Reason,
        bytes: Vec<u8>,
        at: usize,
        give_up: Instant,
    },
    Ended(Reason),
}

/// What the stream does with a read or write while armed.
#[derive(Debug)]
pub enum Gate {
    /// Go on as usual.
    Open,
    /// The gateway is writing its closing bytes: wait.
    Pending,
    /// The connection has ended: fail the read or write.
    Closed,
}

impl Lifetime {
    /// For `who`'s token (`exp` + `leeway_secs` seconds after the epoch), revocable unless it
    /// is another issuer's; armed before the response head is written.
    pub fn new(who: &Verified, leeway_secs: u64, revocations: &Arc<Revocations>) -> Self {
        let end_ms = who.exp.saturating_add(leeway_secs).saturating_mul(1000);
        let now_ms = crate::clock::unix_millis();
        let ends = Instant::now() + Duration::from_millis(end_ms.saturating_sub(now_ms));
        let revocation = (!who.external).then(|| Revocable {
            revocations: Arc::clone(revocations),
            jti: who.jti,
            user: who.user_uuid,
            iat: who.iat,
            // Checked on the first poll: a revocation since admission is not missed.
            seen: u64::MAX,
            news: Box::pin(revocations.news()),
        });
        Self {
            sleep: Box::pin(tokio::time::sleep_until(ends)),
            ends,
            revocation,
            framing: Framing::default(),
            state: State::Open,
        }
    }

    /// For an HTTP/2 stream, which has no bytes of its own to follow: resolves (and is
    /// counted) when the token expires or is revoked, and the h2 session ends the response
    /// there with END_STREAM (`SessionV2::end_response_when`, vendor/README.md patch 3).
    pub fn ended(mut self) -> impl Future<Output = ()> + Send {
        std::future::poll_fn(move |cx| {
            self.due(cx).map_or(Poll::Pending, |reason| {
                reason.count();
                Poll::Ready(())
            })
        })
    }

    /// Bytes the response wrote (followed through its framing).
    pub fn wrote(&mut self, bytes: &[u8]) {
        if matches!(self.state, State::Open) {
            self.framing.wrote(bytes);
        }
    }

    /// Called before each read and write: drives the end once it is due.
    pub fn poll_gate<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        inner: &mut W,
    ) -> Gate {
        if let State::Open = self.state {
            let Some(reason) = self.due(cx) else {
                return Gate::Open;
            };
            reason.count();
            self.state = State::Ending {
                reason,
                bytes: self.framing.closing(reason),
                at: 0,
                give_up: Instant::now() + GRACE,
            };
            self.sleep.as_mut().reset(Instant::now() + GRACE);
        }
        if let State::Ending {
            reason,
            bytes,
            at,
            give_up,
        } = &mut self.state
        {
            let reason = *reason;
            let done = match Self::poll_end(cx, inner, bytes, at) {
                Poll::Ready(()) => true,
                Poll::Pending => {
                    Instant::now() >= *give_up || self.sleep.as_mut().poll(cx).is_ready()
                }
            };
            if !done {
                return Gate::Pending;
            }
            self.state = State::Ended(reason);
        }
        Gate::Closed
    }

    /// The error every read and write gets once the connection has ended.
    pub fn error(&self) -> io::Error {
        let reason = match self.state {
            State::Ended(Reason::Revoked) => Reason::Revoked,
            _ => Reason::Expired,
        };
        io::Error::new(io::ErrorKind::ConnectionAborted, Ended(reason))
    }

    /// Has the token expired or been revoked? Registers for the wake-ups when not.
    fn due(&mut self, cx: &mut Context<'_>) -> Option<Reason> {
        if self.sleep.as_mut().poll(cx).is_ready() || Instant::now() >= self.ends {
            return Some(Reason::Expired);
        }
        let r = self.revocation.as_mut()?;
        while r.news.as_mut().poll(cx).is_ready() {
            r.news = Box::pin(r.revocations.news());
        }
        // The generation moves before `news` wakes anyone: read after registering, nothing
        // is missed.
        let now = r.revocations.generation();
        if now != r.seen {
            r.seen = now;
            if r.revocations.snapshot().is_revoked(r.jti, r.user, r.iat) {
                return Some(Reason::Revoked);
            }
        }
        None
    }

    /// Writes the closing bytes, flushes, shuts the write half down (the FIN).
    fn poll_end<W: AsyncWrite + Unpin + ?Sized>(
        cx: &mut Context<'_>,
        inner: &mut W,
        bytes: &[u8],
        at: &mut usize,
    ) -> Poll<()> {
        while *at < bytes.len() {
            match Pin::new(&mut *inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(n)) if n > 0 => *at += n,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        if Pin::new(&mut *inner).poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut *inner).poll_shutdown(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";

    #[test]
    fn a_head_split_anywhere_is_found() {
        let mut f = Framing::default();
        for b in HEAD_101 {
            f.wrote(std::slice::from_ref(b));
        }
        assert!(matches!(f.body, Body::WebSocket(_)));
        let mut f = Framing::default();
        f.wrote(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r");
        f.wrote(b"\n\r");
        assert!(matches!(f.body, Body::Head));
        f.wrote(b"\n");
        assert!(matches!(f.body, Body::Chunked(_)));
    }

    #[test]
    fn websocket_frames_are_followed_to_their_boundaries_in_any_split() {
        // A 5-byte text frame, a 300-byte binary frame (16-bit length), a masked ping.
        let mut bytes = HEAD_101.to_vec();
        bytes.extend_from_slice(&[0x81, 5]);
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        bytes.extend_from_slice(&[7; 300]);
        bytes.extend_from_slice(&[0x89, 0x82, 1, 2, 3, 4, 9, 9]);
        let boundaries = [
            HEAD_101.len(),
            HEAD_101.len() + 7,
            HEAD_101.len() + 7 + 304,
            bytes.len(),
        ];
        for split in [1, 2, 3, 7, 64, bytes.len()] {
            let mut f = Framing::default();
            let mut at = 0;
            for part in bytes.chunks(split) {
                f.wrote(part);
                at += part.len();
                let closing = f.closing(Reason::Expired);
                assert_eq!(
                    !closing.is_empty(),
                    boundaries.contains(&at),
                    "split {split}, at {at}"
                );
                if !closing.is_empty() {
                    assert_eq!(closing, Reason::Expired.close_frame());
                }
            }
        }
    }

    #[test]
    fn chunks_are_followed_to_their_boundaries_and_the_last_one_ends_them() {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(b"5\r\nhello\r\n");
        bytes.extend_from_slice(b"1A;ext=1\r\n");
        bytes.extend_from_slice(&[b'x'; 26]);
        bytes.extend_from_slice(b"\r\n");
        let boundaries = [head.len(), head.len() + 10, bytes.len()];
        for split in [1, 3, 11, bytes.len()] {
            let mut c = Framing::default();
            let mut at = 0;
            for part in bytes.chunks(split) {
                c.wrote(part);
                at += part.len();
                let closing = c.closing(Reason::Revoked);
                assert_eq!(
                    !closing.is_empty(),
                    boundaries.contains(&at),
                    "split {split}, at {at}"
                );
                if !closing.is_empty() {
                    assert_eq!(closing, b"0\r\n\r\n");
                }
            }
        }
        let mut c = Framing::default();
        c.wrote(head);
        c.wrote(b"0;e=1\r\n\r\n");
        assert!(
            c.closing(Reason::Expired).is_empty(),
            "after the last chunk nothing is added"
        );
        // Close-delimited: nothing to add, the FIN ends it.
        let mut c = Framing::default();
        c.wrote(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n");
        assert!(c.closing(Reason::Expired).is_empty());
    }

    #[test]
    fn the_close_frame_is_1008_with_the_reason() {
        let f = Reason::Revoked.close_frame();
        assert_eq!(&f[..4], &[0x88, 15, 0x03, 0xf0]);
        assert_eq!(&f[4..], b"token revoked");
    }
}
