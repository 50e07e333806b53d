//! Pingora's own answer to a request head it cannot parse (a malformed request line or header,
//! conflicting `Content-Length`s, a bad `Transfer-Encoding`, an absolute-form target naming
//! another host, ...) is a bare `400` with no body, written before any gateway code runs: the
//! proxy has no hook there. The downstream stream wrapper (`deadline::HeadDeadline`) sees it
//! go out: a `400` status line written while a request head is still due (no gateway code
//! has seen one) can only be Pingora's, and is replaced on the wire by the gateway's own
//! problem+json (`bad_request`), like every other refusal. Pingora closes the connection
//! after it, as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use crate::problem::{Code, Problem};

/// The status line Pingora writes for a head it refuses.
const BARE_400: &[u8] = b"HTTP/1.1 400 ";

/// Our response for Pingora's bare 400, when `first` (the start of what it writes) is one.
pub fn replacement(first: &[u8]) -> Option<Replacing> {
    if !first.starts_with(BARE_400) {
        return None;
    }
    let problem = Problem::new(Code::BadRequest).detail("The request is not valid HTTP/1.1");
    let body = problem.body();
    let mut bytes = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    crate::ops::metrics::REJECTIONS
        .with_label_values(&[Code::BadRequest.as_str()])
        .inc();
    Some(Replacing { bytes, sent: 0 })
}

/// Our response on its way out in place of Pingora's, whose bytes are all taken and dropped.
#[derive(Debug)]
pub struct Replacing {
    bytes: Vec<u8>,
    sent: usize,
}

impl Replacing {
    /// Writes what is left of our response to `inner`; `Ready(Ok)` once all of it is out.
    pub fn poll_send<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        inner: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.bytes.len() {
            match Pin::new(&mut *inner).poll_write(cx, &self.bytes[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pingoras_400_is_replaced_and_by_a_problem_document() {
        assert!(replacement(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 405 Method Not Allowed\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 100 Continue\r\n").is_none());
        let r = replacement(b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\n\r\n").unwrap();
        let text = String::from_utf8(r.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/problem+json"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert_eq!(v["status"], 400);
    }
}
