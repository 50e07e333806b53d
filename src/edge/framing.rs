//! The request head's shape, checked before anything else looks at the request: framing the
//! gateway and an upstream could read differently, and heads too large to be honest.
//!
//! Pingora already refuses the worst of it while reading the header (differing
//! `Content-Length` values, a final `Transfer-Encoding` other than `chunked`, `Transfer-Encoding`
//! on HTTP/1.0), settles `Content-Length` with `Transfer-Encoding` as RFC 9112 6.3 says (chunked,
//! the length dropped before we see the head, the connection closed after), and re-frames every
//! body it forwards with one `Transfer-Encoding: chunked` of its own. What it still passes on:
//! repeated identical `Content-Length` lines, forwarded as sent (an upstream may refuse them or
//! read them otherwise), and a coding list such as `gzip, chunked` or a second
//! `Transfer-Encoding` line, whose other codings it silently drops (the upstream would get
//! compressed bytes labelled plain). No honest client sends either. So the rule is plain: at
//! most one `Content-Length` line holding one number; at most one `Transfer-Encoding` line,
//! exactly `chunked`. Anything else is 400: the gateway never guesses at framing.
//!
//! Sizes: Pingora buffers a head of up to 1 MiB and 256 lines and forwards it all. The gateway
//! refuses far less: a target over [`MAX_TARGET_BYTES`], a header line over
//! [`MAX_HEADER_LINE_BYTES`] or a head over [`MAX_HEAD_BYTES`] is 400 before any parsing of
//! cookies or tokens, and never reaches an upstream (whose own limits are usually 8 to 16 KiB).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

/// Longest request target (path and query) the gateway accepts.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Longest single header line (name and value); a token may be up to 8 KiB, a cookie header
/// carries it and others.
pub const MAX_HEADER_LINE_BYTES: usize = 16 * 1024;
/// Largest request head: target plus every header line.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a request head was refused. For logs; the client gets a plain 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    TargetTooLong,
    HeaderTooLong,
    HeadTooLarge,
    /// More than one `Content-Length` line, or a comma-separated list.
    RepeatedLength,
    /// More than one `Transfer-Encoding` line, or anything but the single coding `chunked`.
    UnclearTransferEncoding,
}

/// Checks the size and the framing headers of a parsed request head.
pub fn check(req: &RequestHeader) -> Result<(), FramingError> {
    let target = req.raw_path().len();
    if target > MAX_TARGET_BYTES {
        return Err(FramingError::TargetTooLong);
    }
    let mut head = target;
    for (name, value) in &req.headers {
        // name, ": ", value, CRLF
        let line = name.as_str().len() + value.len() + 4;
        if line > MAX_HEADER_LINE_BYTES {
            return Err(FramingError::HeaderTooLong);
        }
        head += line;
    }
    if head > MAX_HEAD_BYTES {
        return Err(FramingError::HeadTooLarge);
    }
    let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    let (length, coding) = (lengths.next(), codings.next());
    if lengths.next().is_some() || length.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(FramingError::RepeatedLength);
    }
    if codings.next().is_some()
        || coding.is_some_and(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Err(FramingError::UnclearTransferEncoding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::edge::test_request;

    #[test]
    fn plain_framing_passes() {
        for h in [
            &[][..],
            &[("content-length", "12")][..],
            &[("transfer-encoding", "chunked")][..],
            &[("Transfer-Encoding", "Chunked")][..],
            &[("transfer-encoding", " chunked\t")][..],
        ] {
            assert_eq!(check(&test_request("POST", "/x", h)), Ok(()), "{h:?}");
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let long = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        let r = RequestHeader::build("GET", long.as_bytes(), None).unwrap();
        assert_eq!(check(&r), Err(FramingError::TargetTooLong));
        let big = "v".repeat(MAX_HEADER_LINE_BYTES);
        assert_eq!(
            check(&test_request("POST", "/x", &[("x-big", &big)])),
            Err(FramingError::HeaderTooLong)
        );
        let ok = "v".repeat(MAX_HEADER_LINE_BYTES - 20);
        assert_eq!(
            check(&test_request("POST", "/x", &[("x-big", &ok)])),
            Ok(())
        );
        let pad = "p".repeat(10_000);
        let many: Vec<(&str, &str)> = (0..7).map(|_| ("x-pad", pad.as_str())).collect();
        assert_eq!(
            check(&test_request("POST", "/x", &many)),
            Err(FramingError::HeadTooLarge)
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use FramingError::{RepeatedLength, UnclearTransferEncoding};
        for (h, e) in [
            (
                &[("content-length", "4"), ("content-length", "4")][..],
                RepeatedLength,
            ),
            (&[("content-length", "4, 4")][..], RepeatedLength),
            (
                &[
                    ("transfer-encoding", "identity"),
                    ("transfer-encoding", "chunked"),
                ][..],
                UnclearTransferEncoding,
            ),
            (
                &[("transfer-encoding", "identity, chunked")][..],
                UnclearTransferEncoding,
            ),
            (
                &[("transfer-encoding", "gzip, chunked")][..],
                UnclearTransferEncoding,
            ),
            (
                &[("transfer-encoding", "xchunked")][..],
                UnclearTransferEncoding,
            ),
            (
                &[("transfer-encoding", "chunked, chunked")][..],
                UnclearTransferEncoding,
            ),
        ] {
            assert_eq!(check(&test_request("POST", "/x", h)), Err(e), "{h:?}");
        }
    }
}
