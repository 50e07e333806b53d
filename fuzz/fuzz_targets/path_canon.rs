//! Request path canonicalisation on arbitrary text.
//!
//! Properties: never panics; a canonical path is absolute, idempotent (canonicalising it again
//! changes nothing), has no empty, `.` or `..` segment however it is decoded (percent
//! escapes, `;` parameters), no encoded `/`, `\` or NUL, no raw `\`, no double encoding, and, made
//! from a request path, is one the `http` crate parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::fuzzing::normalise;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = normalise(input) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{input:?} -> {canonical:?}");
    let raw_controls = input.contains(|c: char| c.is_ascii_control());
    let again = normalise(&canonical);
    assert_eq!(
        again.as_deref(),
        Ok(&*canonical),
        "not idempotent: {input:?}"
    );
    assert!(!canonical.contains('\\'), "{input:?} -> {canonical:?}");
    let segments: Vec<&str> = canonical[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        // Only the last segment may be empty: the trailing slash.
        assert!(
            !seg.is_empty() || i + 1 == segments.len(),
            "{input:?} -> {canonical:?}"
        );
        let decoded = decode_fully(seg);
        let base = decoded.split(';').next().unwrap_or_default();
        assert!(
            base != "." && base != "..",
            "dot segment reaches routing: {input:?} -> {canonical:?}"
        );
        // Raw control characters never arrive (the HTTP parser refuses them in a request
        // target); escaped ones must not get through.
        assert!(
            !decoded.contains(['/', '\\']) && (raw_controls || !decoded.contains('\0')),
            "encoded separator reaches routing: {input:?} -> {canonical:?}"
        );
    }
    // What arrives as a request path must leave as one.
    if input.parse::<http::Uri>().is_ok_and(|u| u.path() == input) {
        let uri: http::Uri = canonical
            .parse()
            .unwrap_or_else(|e| panic!("{input:?} -> {canonical:?} is not a request path: {e}"));
        assert_eq!(uri.path(), &*canonical);
    }
});

/// Percent-decodes until nothing changes, as a careless upstream that decodes twice would.
fn decode_fully(seg: &str) -> String {
    let mut cur = seg.to_owned();
    for _ in 0..4 {
        let next: String = percent_decode(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
