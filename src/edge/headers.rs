//! The header policy, one job per function: strip the client's identity headers, find the
//! credential, take it away before the upstream, inject the verified identity, and keep a sane
//! request id. Identity headers are set only from a verified token, never from the client.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::authn::Verified;

pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Is this header in the identity namespace? Names arrive lower-cased; `_` counts as `-`
/// because some upstream stacks (CGI, WSGI, nginx with underscores) read them alike.
pub fn is_identity_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 7
        && b[0].eq_ignore_ascii_case(&b'x')
        && matches!(b[1], b'-' | b'_')
        && b[2..6].eq_ignore_ascii_case(b"user")
        && matches!(b[6], b'-' | b'_')
}

/// Removes every header of the identity namespace, in every spelling and repetition.
pub fn strip_identity_headers(req: &mut RequestHeader) {
    // Common case: nothing to strip, nothing allocated.
    if !req.headers.keys().any(|n| is_identity_header(n.as_str())) {
        return;
    }
    let doomed: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|n| is_identity_header(n.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        req.remove_header(&name);
    }
}

/// Removes every header that is `name` once lower-cased with `_` read as `-` (how some
/// servers behind the gateway read header names), as the identity headers are removed.
pub fn strip_named(req: &mut RequestHeader, name: &HeaderName) {
    let same = |n: &HeaderName| {
        n.as_str().len() == name.as_str().len()
            && n.as_str()
                .bytes()
                .zip(name.as_str().bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    };
    if !req.headers.keys().any(same) {
        return;
    }
    let doomed: Vec<HeaderName> = req.headers.keys().filter(|n| same(n)).cloned().collect();
    for n in doomed {
        req.remove_header(&n);
    }
}

/// The edge's first look at the headers: the whole identity namespace stripped, and the
/// request id fixed (the client's when sane, else a new one).
pub fn strip_and_identify(req: &mut RequestHeader) -> HeaderValue {
    strip_identity_headers(req);
    request_id(req)
}

/// Where a presented token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Bearer,
    Cookie,
}

/// The request's credential, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    Token(&'a [u8], Source),
    /// Two `Authorization` headers or two auth cookies: refused rather than guessed.
    Ambiguous,
}

/// Two credentials of one kind were presented (`problem` makes it a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousCredential;

impl<'a> Credential<'a> {
    /// The token, if one was presented; an error when it is ambiguous.
    pub fn token(self) -> Result<Option<&'a [u8]>, AmbiguousCredential> {
        match self {
            Self::None => Ok(None),
            Self::Token(t, _) => Ok(Some(t)),
            Self::Ambiguous => Err(AmbiguousCredential),
        }
    }
}

/// Reads the token from `Authorization: Bearer` or, when there is no Bearer header, from the
/// auth cookie. Other `Authorization` schemes are not ours and are ignored here.
pub fn credential<'a>(req: &'a RequestHeader, cookie_name: &'a str) -> Credential<'a> {
    let mut auth = req.headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(first) = auth.next() {
        if auth.next().is_some() {
            return Credential::Ambiguous;
        }
        if let Some(token) = bearer_token(first.as_bytes()) {
            return Credential::Token(token, Source::Bearer);
        }
    }
    let mut found = None;
    for header in req.headers.get_all(http::header::COOKIE) {
        for value in cookie_values(header.as_bytes(), cookie_name) {
            if found.is_some() {
                return Credential::Ambiguous;
            }
            found = Some(value);
        }
    }
    found.map_or(Credential::None, |t| Credential::Token(t, Source::Cookie))
}

/// The token of a `Bearer` authorization value (scheme case-insensitive), possibly empty.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = &value[6..];
    match rest.first() {
        None => Some(rest),
        Some(b' ' | b'\t') => Some(rest.trim_ascii()),
        Some(_) => None, // e.g. "Bearerx": another scheme
    }
}

fn cookie_values<'a>(header: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| {
            let v = pair[eq + 1..].trim_ascii();
            v.strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v)
        })
    })
}

/// Takes the credential away before the upstream: the Bearer `Authorization` header, and the
/// auth cookie out of `Cookie` (other cookies stay; an emptied `Cookie` header goes).
pub fn remove_credentials(req: &mut RequestHeader, cookie_name: &str) {
    let is_bearer = req
        .headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| bearer_token(v.as_bytes()).is_some());
    if is_bearer {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    let carries_cookie = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|h| cookie_values(h.as_bytes(), cookie_name).next().is_some());
    if !carries_cookie {
        return;
    }
    let kept: Vec<Vec<u8>> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|h| without_cookie(h.as_bytes(), cookie_name))
        .filter(|v| !v.is_empty())
        .collect();
    req.remove_header(&http::header::COOKIE);
    for value in kept {
        // Built from bytes of a valid header value minus whole pairs: still valid.
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let _ = req.append_header(http::header::COOKIE, v);
        }
    }
}

fn without_cookie(header: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len());
    for pair in header.split(|&b| b == b';') {
        let trimmed = pair.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        let is_ours = trimmed
            .iter()
            .position(|&b| b == b'=')
            .is_some_and(|eq| trimmed[..eq].trim_ascii() == name.as_bytes());
        if !is_ours {
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(trimmed);
        }
    }
    out
}

/// Sets `X-User-Id` / `X-User-Email` from a verified token (after the namespace was stripped).
pub fn inject_identity(req: &mut RequestHeader, who: &Verified) {
    let _ = req.insert_header(X_USER_ID.as_str(), who.user_id.clone());
    if let Some(email) = &who.email {
        let _ = req.insert_header(X_USER_EMAIL.as_str(), email.clone());
    }
}

/// The client's request id when it is sane (1..=128 of `A-Za-z0-9-_.:/+=`), else a new one.
pub fn request_id(req: &RequestHeader) -> HeaderValue {
    let mut ids = req.headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(id), None) = (ids.next(), ids.next()) {
        let b = id.as_bytes();
        let sane = !b.is_empty()
            && b.len() <= 128
            && b.iter().all(|&c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
            });
        if sane {
            return id.clone();
        }
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = fresh_request_id().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a UUID is a valid header value")
}

thread_local! {
    /// Per worker thread: a random 64-bit prefix drawn once, a secret 64-bit key and a counter.
    static REQUEST_IDS: std::cell::Cell<(u64, u64, u64)> = std::cell::Cell::new({
        let seed = uuid::Uuid::new_v4().as_u64_pair();
        (seed.0, seed.1, 0)
    });
}

/// A request id that is unique without a system call per request (`getrandom` per request
/// showed in the profile): a random per-thread prefix, and a per-thread counter passed
/// through a bijection (so never repeated) after a random per-thread XOR, so ids do not count
/// up visibly. They are correlation ids, not secrets: nothing may rely on them being
/// unguessable.
/// Shaped as an RFC 9562 UUIDv8 (custom layout).
fn fresh_request_id() -> uuid::Uuid {
    REQUEST_IDS.with(|cell| {
        let (prefix, key, n) = cell.get();
        cell.set((prefix, key, n.wrapping_add(1)));
        let low = mix(n ^ key);
        uuid::Builder::from_custom_bytes((u128::from(prefix) << 64 | u128::from(low)).to_be_bytes())
            .into_uuid()
    })
}

/// splitmix64's finaliser: a bijection on u64, so distinct counters give distinct outputs.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        crate::edge::test_request("GET", "/", headers)
    }

    #[test]
    fn the_whole_identity_namespace_is_stripped_in_every_spelling() {
        let mut r = req(&[
            ("X-User-Id", "a"),
            ("x-user-id", "b"),
            ("X_User_Email", "c"),
            ("x_user-role", "d"),
            ("X-USER-anything", "e"),
            ("X-Userid", "kept"),
            ("X-Username", "kept"),
            ("Accept", "kept"),
        ]);
        strip_identity_headers(&mut r);
        let mut left: Vec<_> = r.headers.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["accept", "x-userid", "x-username"]);
    }

    #[test]
    fn bearer_header_wins_over_cookie_and_other_schemes_fall_back_to_cookie() {
        let r = req(&[("Authorization", "bearer abc"), ("Cookie", "t=xyz")]);
        assert_eq!(
            credential(&r, "t"),
            Credential::Token(b"abc", Source::Bearer)
        );
        let r = req(&[
            ("Authorization", "Basic Zm9vOmJhcg=="),
            ("Cookie", "a=1; t=xyz"),
        ]);
        assert_eq!(
            credential(&r, "t"),
            Credential::Token(b"xyz", Source::Cookie)
        );
        let r = req(&[("Authorization", "Bearer")]);
        assert_eq!(credential(&r, "t"), Credential::Token(b"", Source::Bearer));
        let r = req(&[("Authorization", "Bearerxyz")]);
        assert_eq!(credential(&r, "t"), Credential::None);
    }

    #[test]
    fn two_credentials_of_one_kind_are_ambiguous() {
        let r = req(&[("Authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(credential(&r, "t"), Credential::Ambiguous);
        let r = req(&[("Cookie", "t=a"), ("Cookie", "t=b")]);
        assert_eq!(credential(&r, "t"), Credential::Ambiguous);
        let r = req(&[("Cookie", "t=a; t=b")]);
        assert_eq!(credential(&r, "t"), Credential::Ambiguous);
    }

    #[test]
    fn only_the_auth_cookie_and_the_bearer_header_are_removed() {
        let mut r = req(&[
            ("Authorization", "Bearer abc"),
            ("Cookie", "a=1; t=secret; b=2"),
            ("Cookie", "t=secret"),
        ]);
        remove_credentials(&mut r, "t");
        assert!(r.headers.get("authorization").is_none());
        let cookies: Vec<_> = r.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);

        let mut r = req(&[("Authorization", "Basic Zm9v"), ("Cookie", "tt=1")]);
        remove_credentials(&mut r, "t");
        assert_eq!(r.headers["authorization"], "Basic Zm9v");
        assert_eq!(r.headers["cookie"], "tt=1");
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        assert_eq!(request_id(&req(&[("X-Request-Id", "abc-123")])), "abc-123");
        for bad in ["", "has space", "<script>", &"x".repeat(129)] {
            let id = request_id(&req(&[("X-Request-Id", bad)]));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36);
        }
        assert_eq!(request_id(&req(&[])).len(), 36);
    }

    #[test]
    fn generated_request_ids_are_distinct_uuids() {
        let ids: std::collections::HashSet<_> = (0..10_000)
            .map(|_| request_id(&req(&[])).to_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        let from_another_thread = std::thread::spawn(|| request_id(&req(&[]))).join().unwrap();
        assert!(!ids.contains(from_another_thread.to_str().unwrap()));
        for id in ids.iter().take(10) {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 8);
        }
    }
}
