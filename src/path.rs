//! Request path canonicalisation: the one spelling both the route table and the upstream see.
//!
//! Routes match the path the upstream will receive, so every spelling of a protected path must
//! either become that path here (and be checked as such) or be refused. The rules are in
//! `docs/edge-decisions.md`; in short: decode percent-escapes of unreserved characters, collapse
//! empty segments, resolve `.` and `..`, and refuse what an upstream could read differently
//! (encoded `/`, `\` or NUL, raw `\`, double encoding, `..;`, malformed escapes, `..` above root).
//! [`canonicalise_target`] writes that spelling back into the request target.

use std::borrow::Cow;

use pingora::http::RequestHeader;

/// Why a path was refused. For logs; the client gets a plain 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    EncodedSeparator,
    Backslash,
    DoubleEncoding,
    MalformedEscape,
    /// Escapes that do not decode to UTF-8 (`%FF`, overlong `%C0%AE`): some decoders turn an
    /// overlong sequence into `.` or `/`.
    InvalidUtf8,
    DotSegmentWithParameters,
    AboveRoot,
    /// The canonical target could not be written back (cannot happen for a parsed request).
    Unrepresentable,
}

/// Rewrites the request target to the canonical path (and the query as sent), so that the
/// route table and the upstream see one spelling. Pingora keeps the raw target for the wire,
/// so anything but a canonical origin-form target is rewritten (absolute form included) or
/// refused (`*`, `public/x`).
pub fn canonicalise_target(req: &mut RequestHeader) -> Result<(), PathError> {
    let raw = req.raw_path();
    let origin_form = raw.first() == Some(&b'/');
    let absolute_form = raw
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"http://"))
        || raw
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"https://"));
    if !origin_form && !absolute_form {
        return Err(PathError::NotOriginForm);
    }
    let canonical = match normalise(req.uri.path())? {
        Cow::Borrowed(_) if origin_form => return Ok(()),
        p => p.into_owned(),
    };
    let target = match req.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let uri = target.parse().map_err(|_| PathError::Unrepresentable)?;
    req.set_uri(uri);
    Ok(())
}

/// The canonical form of `path` (no query), borrowed when it is already canonical.
pub fn normalise(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    if is_canonical(bytes) {
        return Ok(Cow::Borrowed(path));
    }

    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw in path[1..].split('/') {
        let seg = decode_segment(raw)?;
        trailing_slash = false;
        // An encoded `;` counts too: an upstream that decodes before it strips parameters
        // reads `..%3B` as `..;`, that is `..` (escapes were upper-cased by the decoding).
        let base = seg.split(';').next().unwrap_or_default();
        let base = base.split("%3B").next().unwrap_or_default();
        if (base == "." || base == "..") && seg.len() != base.len() {
            return Err(PathError::DotSegmentWithParameters);
        }
        match seg.as_str() {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = true;
            }
            _ => segments.push(seg),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when no rule would change or refuse the path: the common case, checked without
/// allocating.
fn is_canonical(b: &[u8]) -> bool {
    if b.iter().any(|&c| c == b'%' || c == b'\\') {
        return false;
    }
    // Any `//`, `/./`, `/../` or a trailing `/.` or `/..` needs the slow path; so does `/.;`.
    !b.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let v = hex_pair(b, i + 1).ok_or(PathError::MalformedEscape)?;
                match v {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    b'%' if hex_pair(b, i + 3).is_some() => {
                        return Err(PathError::DoubleEncoding);
                    }
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(v >> 4)]));
                        out.push(char::from(HEX[usize::from(v & 0xf)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Whole characters: a byte-wise copy would re-encode UTF-8 as Latin-1.
                let c = raw[i..].chars().next().unwrap_or_default();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    // Decoding can complete a double encoding the raw text did not show: `%25e%41` becomes
    // `%25eA`, which a second decoding reads as `%EA`, and which this function would refuse
    // next time (the canonical form must be a fixed point).
    let b = out.as_bytes();
    if (0..b.len()).any(|j| b[j..].starts_with(b"%25") && hex_pair(b, j + 3).is_some()) {
        return Err(PathError::DoubleEncoding);
    }
    if out.contains('%') && !escapes_are_utf8(&out) {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Whether a segment whose escapes are already well-formed decodes to UTF-8.
fn escapes_are_utf8(segment: &str) -> bool {
    let b = segment.as_bytes();
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex_pair(b, i + 1)) {
            (b'%', Some(v)) => {
                bytes.push(v);
                i += 3;
            }
            (c, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&bytes).is_ok()
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_pair(b: &[u8], at: usize) -> Option<u8> {
    let hi = hex_digit(*b.get(at)?)?;
    let lo = hex_digit(*b.get(at + 1)?)?;
    Some(hi << 4 | lo)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str) -> String {
        normalise(p)
            .unwrap_or_else(|e| panic!("{p}: {e:?}"))
            .into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed_untouched() {
        for p in ["/", "/api/u/tasks/1", "/a/b/", "/a.b/c..d", "/a;b=c"] {
            assert!(matches!(normalise(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_empty_segments_are_resolved() {
        assert_eq!(ok("/public/../api/u/tasks/x"), "/api/u/tasks/x");
        assert_eq!(ok("/public/%2e%2e/api/u"), "/api/u");
        assert_eq!(ok("/public/.%2E/api/u"), "/api/u");
        assert_eq!(ok("//api//u///tasks/x"), "/api/u/tasks/x");
        assert_eq!(ok("/a/./b/."), "/a/b/");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(ok("/a//"), "/a/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_uppercased() {
        assert_eq!(ok("/%61pi/%7Euser"), "/api/~user");
        assert_eq!(ok("/a%20b/%c3%a9"), "/a%20b/%C3%A9");
    }

    #[test]
    fn non_ascii_characters_survive_the_slow_path_unchanged() {
        assert_eq!(ok("/x/./caf\u{e9}"), "/x/caf\u{e9}");
        assert_eq!(ok("/.\u{e9}"), "/.\u{e9}");
        assert_eq!(ok("//\u{1f600}/%41"), "/\u{1f600}/A");
        assert_eq!(ok(&ok("/a//\u{e9}")), "/a/\u{e9}");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (p, e) in [
            ("*", PathError::NotOriginForm),
            ("api", PathError::NotOriginForm),
            ("/api%2Fu", PathError::EncodedSeparator),
            ("/api%2fu", PathError::EncodedSeparator),
            ("/api%5cu", PathError::EncodedSeparator),
            ("/api%00", PathError::EncodedSeparator),
            ("/api\\u", PathError::Backslash),
            ("/a/%252e%252e/b", PathError::DoubleEncoding),
            ("/%25e%41", PathError::DoubleEncoding),
            ("/a/%25%32%66/b", PathError::DoubleEncoding),
            ("/a/%", PathError::MalformedEscape),
            ("/a/%4", PathError::MalformedEscape),
            ("/a/%zz", PathError::MalformedEscape),
            ("/a/%c0%ae%c0%ae/b", PathError::InvalidUtf8),
            ("/a/%e0%80%ae", PathError::InvalidUtf8),
            ("/a/%ff", PathError::InvalidUtf8),
            ("/a/%C3", PathError::InvalidUtf8),
            ("/public/..;/api/u", PathError::DotSegmentWithParameters),
            ("/public/.;x/api", PathError::DotSegmentWithParameters),
            ("/public/..%3B/api/u", PathError::DotSegmentWithParameters),
            (
                "/public/%2e%2e%3bx/api/u",
                PathError::DotSegmentWithParameters,
            ),
            ("/.%3B", PathError::DotSegmentWithParameters),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
        ] {
            assert_eq!(normalise(p).unwrap_err(), e, "{p}");
        }
    }
}
