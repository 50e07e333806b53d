//! Forward-auth (CONTRACT section 11): Portcullis as the auth server of an nginx, Traefik or
//! Envoy in front. The asking proxy names the original request (nginx: `X-Original-Method` /
//! `X-Original-URI`; Traefik: `X-Forwarded-Method` / `X-Forwarded-Uri`; Envoy `ext_authz`: its
//! own method and the path after `/_portcullis/auth/envoy`); that request is rebuilt with the
//! asking request's headers (credential, cookie, `Origin`, ...) and goes through the very
//! admission the proxy uses (`gateway::Gateway::admit`: framing, canonical path, spoof stripping,
//! route table, token, claim rules, owner rule, revocation). Allowed: 200 with the identity
//! headers for the proxy to copy upstream. Refused: the problem the proxy itself would answer.
//!
//! Only peers in `forward_auth.trusted_proxies` may ask (403 otherwise, before anything else is
//! looked at). An original method or URI that is missing, repeated or malformed is 400, never
//! an allow, and so is an original target that is not canonical (dot segments, encoded
//! unreserved characters): the proxy in front sends it to its upstream as it is, so only a
//! target the gateway would not rewrite can be decided for it. An ask whose own path resolves
//! out of the endpoints is 400 too. A CORS preflight is decided like any request (the proxy in
//! front answers CORS itself); the gateway's own endpoints (identity, JWKS) are no route: 404.
//! Traefik's `X-Forwarded-Host` is the original `Host` (the same-origin check reads it).

use std::net::IpAddr;

use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};

use super::headers::{X_USER_EMAIL, X_USER_ID};
use crate::authn::Verified;
use crate::config::{FORWARD_AUTH_PREFIX, ForwardAuth};
use crate::problem::{Code, Problem};

/// Longest original URI accepted (the proxy's own request-target bound is Pingora's).
const MAX_ORIGINAL_URI: usize = 8192;

/// Which proxy asks, by the endpoint it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Nginx,
    Traefik,
    Envoy,
}

impl Asker {
    /// The endpoint `path` (under [`FORWARD_AUTH_PREFIX`]) names; `None` for an unknown one.
    pub(super) fn of(path: &str) -> Option<Self> {
        let rest = path.strip_prefix(FORWARD_AUTH_PREFIX)?;
        match rest {
            "nginx" => Some(Self::Nginx),
            "traefik" => Some(Self::Traefik),
            _ if rest == "envoy" || rest.starts_with("envoy/") => Some(Self::Envoy),
            _ => None,
        }
    }

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::Traefik => "traefik",
            Self::Envoy => "envoy",
        }
    }

    /// The original request's method and target, as this proxy sends them.
    fn original(
        self,
        asking: &RequestHeader,
        as_sent: Option<&[u8]>,
    ) -> Result<(http::Method, String), Problem> {
        let (method, target) = match self {
            Self::Nginx => (
                one(
                    asking,
                    "x-original-method",
                    "X-Original-Method must be sent once",
                )?,
                one(asking, "x-original-uri", "X-Original-URI must be sent once")?,
            ),
            Self::Traefik => (
                one(
                    asking,
                    "x-forwarded-method",
                    "X-Forwarded-Method must be sent once",
                )?,
                one(
                    asking,
                    "x-forwarded-uri",
                    "X-Forwarded-Uri must be sent once",
                )?,
            ),
            Self::Envoy => {
                // The original path as Envoy sent it, unresolved: it is decided (and refused
                // when not canonical) exactly as the proxy would decide it.
                let sent = as_sent
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .unwrap_or_else(|| asking.uri.path());
                let sent = sent.split_once('?').map_or(sent, |(p, _)| p);
                let after = sent
                    .strip_prefix(FORWARD_AUTH_PREFIX)
                    .and_then(|p| p.strip_prefix("envoy"))
                    .ok_or_else(|| bad("Not an Envoy forward-auth path"))?;
                let path = if after.is_empty() { "/" } else { after };
                let target = match asking.uri.query() {
                    Some(q) => format!("{path}?{q}"),
                    None => path.to_owned(),
                };
                return Ok((asking.method.clone(), target));
            }
        };
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| bad("the original method is not an HTTP method"))?;
        if !target.starts_with('/') || target.len() > MAX_ORIGINAL_URI {
            return Err(bad(
                "the original URI must be a path (origin-form) of at most 8 KiB",
            ));
        }
        Ok((method, target.to_owned()))
    }
}

/// The one value of header `name`: missing, repeated, empty or not visible ASCII is a 400
/// that says `why`.
fn one<'a>(
    req: &'a RequestHeader,
    name: &'static str,
    why: &'static str,
) -> Result<&'a str, Problem> {
    let mut values = req.headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(why)),
        _ => Err(bad(why)),
    }
}

fn bad(detail: &'static str) -> Problem {
    Problem::new(Code::BadRequest).detail(detail)
}

/// Headers of the asking request that describe the asking request itself, not the original:
/// its framing (the original's body never comes) and the proxy's own description of it.
fn is_the_askers_own(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "x-original-method"
            | "x-original-uri"
            | "x-forwarded-method"
            | "x-forwarded-uri"
    )
}

impl ForwardAuth {
    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 @ IpAddr::V4(_) => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Whether `path` is a forward-auth endpoint's (the caller checks that forward-auth is on).
pub fn is_endpoint(path: &str) -> bool {
    path.starts_with(FORWARD_AUTH_PREFIX)
}

/// The request target as sent, when it names the forward-auth endpoints before any
/// canonicalisation (the caller checks that forward-auth is on).
pub fn raw_ask(req: &RequestHeader) -> Option<Vec<u8>> {
    let raw = req.raw_path();
    raw.starts_with(FORWARD_AUTH_PREFIX.as_bytes())
        .then(|| raw.to_vec())
}

/// The original request another proxy asks about, rebuilt from the asking request `asking`
/// (already stripped of identity headers, canonical) for the proxy's own admission: refused
/// unless `peer` is a trusted proxy, the endpoint is known, and the original is well formed.
pub(super) fn original_request(
    fa: &ForwardAuth,
    asker: Option<Asker>,
    asking: &RequestHeader,
    as_sent: Option<&[u8]>,
    peer: Option<IpAddr>,
) -> Result<RequestHeader, Problem> {
    if !peer.is_some_and(|ip| fa.trusts(ip)) {
        return Err(
            Problem::new(Code::Forbidden).detail("Forward-auth answers trusted proxies only")
        );
    }
    // Sent to the endpoints, resolved out of them: never decided as something else.
    if as_sent.is_some() && !is_endpoint(asking.uri.path()) {
        return Err(bad(
            "The forward-auth path leaves its endpoint (dot segments)",
        ));
    }
    let asker = asker.ok_or_else(|| Problem::new(Code::NotFound))?;
    if asker == Asker::Nginx && !matches!(asking.method, http::Method::GET | http::Method::HEAD) {
        return Err(Problem::new(Code::NotFound));
    }
    let (method, target) = asker.original(asking, as_sent)?;
    let mut original = RequestHeader::build(method, target.as_bytes(), None)
        .map_err(|_| bad("the original URI is not a valid request target"))?;
    for (name, value) in &asking.headers {
        if !is_the_askers_own(name) {
            original
                .append_header(name.clone(), value.clone())
                .map_err(|_| Problem::new(Code::BadRequest))?;
        }
    }
    // Traefik asks with its own Host and names the original one in X-Forwarded-Host (the
    // same-origin check compares `Origin` with it); the peer is a trusted proxy.
    if asker == Asker::Traefik
        && let Ok(host) = one(asking, "x-forwarded-host", "")
    {
        let _ = original.insert_header(http::header::HOST, host);
    }
    Ok(original)
}

/// 200, empty, with the verified identity (none on a public route or an anonymous optional one).
pub(super) fn allowed(identity: Option<&Verified>) -> ResponseHeader {
    let mut head = crate::problem::head(200, None, 0, "no-store");
    if let Some(who) = identity {
        let _ = head.insert_header(X_USER_ID.clone(), who.user_id.clone());
        if let Some(email) = &who.email {
            let _ = head.insert_header(X_USER_EMAIL.clone(), email.clone());
        }
    }
    head
}

/// Counts one forward-auth answer by asker and result (`allow` or the problem code).
pub(super) fn count(asker: Option<Asker>, answer: Result<(), Code>) {
    let result = match answer {
        Ok(()) => "allow",
        Err(code) => code.as_str(),
    };
    crate::ops::metrics::FORWARD_AUTH_DECISIONS
        .with_label_values(&[asker.map_or("unknown", Asker::as_str), result])
        .inc();
}

/// For the tests of the decision's parts.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::test_request;

    #[test]
    fn endpoints_are_named_exactly() {
        assert_eq!(Asker::of("/_portcullis/auth/nginx"), Some(Asker::Nginx));
        assert_eq!(Asker::of("/_portcullis/auth/traefik"), Some(Asker::Traefik));
        assert_eq!(Asker::of("/_portcullis/auth/envoy"), Some(Asker::Envoy));
        assert_eq!(
            Asker::of("/_portcullis/auth/envoy/api/x"),
            Some(Asker::Envoy)
        );
        for other in [
            "/_portcullis/auth/nginx/x",
            "/_portcullis/auth/envoyx",
            "/_portcullis/auth/",
            "/_portcullis/auth/NGINX",
            "/nginx",
        ] {
            assert_eq!(Asker::of(other), None, "{other}");
        }
    }

    #[test]
    fn the_original_request_is_read_from_each_proxys_headers() {
        let nginx = test_request(
            "GET",
            "/_portcullis/auth/nginx",
            &[
                ("X-Original-Method", "POST"),
                ("X-Original-URI", "/api/x?a=1"),
            ],
        );
        let (m, t) = Asker::Nginx.original(&nginx, None).unwrap();
        assert_eq!((m.as_str(), t.as_str()), ("POST", "/api/x?a=1"));
        let traefik = test_request(
            "GET",
            "/_portcullis/auth/traefik",
            &[("X-Forwarded-Method", "DELETE"), ("X-Forwarded-Uri", "/t")],
        );
        let (m, t) = Asker::Traefik.original(&traefik, None).unwrap();
        assert_eq!((m.as_str(), t.as_str()), ("DELETE", "/t"));
        let envoy = test_request("PUT", "/_portcullis/auth/envoy/api/y?q=2", &[]);
        let (m, t) = Asker::Envoy.original(&envoy, None).unwrap();
        assert_eq!((m.as_str(), t.as_str()), ("PUT", "/api/y?q=2"));
        let bare = test_request("GET", "/_portcullis/auth/envoy", &[]);
        assert_eq!(Asker::Envoy.original(&bare, None).unwrap().1, "/");
        // As sent: the unresolved path, so that it is decided as the proxy would decide it.
        let sent = b"/_portcullis/auth/envoy/a/../../x?q=1";
        assert_eq!(
            Asker::Envoy.original(&envoy, Some(sent)).unwrap().1,
            "/a/../../x?q=2"
        );
    }

    #[test]
    fn a_missing_repeated_or_malformed_original_is_400() {
        for headers in [
            &[("X-Original-URI", "/x")][..],
            &[("X-Original-Method", "GET")],
            &[("X-Original-Method", "GET"), ("X-Original-URI", "")],
            &[("X-Original-Method", ""), ("X-Original-URI", "/x")],
            &[("X-Original-Method", "G E T"), ("X-Original-URI", "/x")],
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "http://evil/x"),
            ],
            &[("X-Original-Method", "GET"), ("X-Original-URI", "x")],
            &[("X-Original-Method", "GET"), ("X-Original-URI", "*")],
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/x"),
                ("X-Original-URI", "/y"),
            ],
        ] {
            let req = test_request("GET", "/_portcullis/auth/nginx", headers);
            let err = Asker::Nginx.original(&req, None).unwrap_err();
            assert_eq!(err.code, Code::BadRequest, "{headers:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_ORIGINAL_URI));
        let req = test_request(
            "GET",
            "/_portcullis/auth/nginx",
            &[("X-Original-Method", "GET"), ("X-Original-URI", &long)],
        );
        assert_eq!(
            Asker::Nginx.original(&req, None).unwrap_err().code,
            Code::BadRequest
        );
    }

    #[test]
    fn trusted_proxies_match_by_network_and_v4_mapped_v6() {
        let fa = ForwardAuth {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        };
        assert!(fa.trusts("10.1.2.3".parse().unwrap()));
        assert!(fa.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(fa.trusts("::1".parse().unwrap()));
        assert!(!fa.trusts("11.0.0.1".parse().unwrap()));
        assert!(!fa.trusts("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_askers_own_framing_and_description_never_reach_the_original() {
        for name in [
            "content-length",
            "transfer-encoding",
            "x-original-uri",
            "x-forwarded-uri",
        ] {
            assert!(is_the_askers_own(&HeaderName::from_static(name)));
        }
        for name in [
            "authorization",
            "cookie",
            "origin",
            "host",
            "x-forwarded-for",
        ] {
            assert!(!is_the_askers_own(&HeaderName::from_static(name)));
        }
    }
}
