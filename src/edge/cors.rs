//! Cross-origin policy: CORS for the configured frontend origins (with credentials, so the
//! auth cookie can travel), and the CSRF defence for cookie-authenticated unsafe requests.
//!
//! CSRF: a browser attaches the auth cookie to any request to the gateway, wherever the page
//! came from. `SameSite=Strict` already stops that in current browsers; the Origin check is the
//! second lock. An unsafe request (not GET / HEAD / OPTIONS) that is authenticated by the
//! cookie, or that targets the identity endpoints, must come from the gateway's own origin or a
//! configured one. The origin is read from `Origin`, else from `Referer`; a request with
//! neither is not from a browser page (browsers send `Origin` on every unsafe request) and is
//! let through. Same-origin compares host and port with `Host`, not the scheme, so a gateway
//! behind a TLS-terminating load balancer still recognises its own pages.

use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::config;

const DEFAULT_ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id";
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// The validated `[cors]` settings.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// Exact origins (`scheme://host[:port]`), lower-cased.
    allowed: Vec<String>,
    allow_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// What the policy says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a cross-origin concern (or allowed); carry on.
    Pass,
    /// A preflight from an allowed origin: answer it here with these headers.
    Preflight,
    /// A preflight from an origin that is not allowed, or a cross-site unsafe request.
    Refuse(&'static str),
}

impl CorsPolicy {
    /// The policy of the validated `[cors]` settings.
    pub fn new(c: &config::Cors) -> Self {
        Self {
            allowed: c.allowed_origins.clone(),
            allow_headers: Some(
                c.allowed_headers
                    .clone()
                    .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOWED_HEADERS)),
            ),
            max_age: Some(HeaderValue::from(c.max_age_secs)),
        }
    }

    /// Is `origin` one of the configured frontends?
    pub fn allows(&self, origin: &[u8]) -> bool {
        let origin = origin.strip_suffix(b"/").unwrap_or(origin);
        self.allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// The origin to echo in `Access-Control-Allow-Origin`, when the request has an allowed one.
    pub fn allowed_origin(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let origin = req.headers.get(http::header::ORIGIN)?;
        self.allows(origin.as_bytes()).then(|| origin.clone())
    }

    /// Preflight handling and the CSRF check. `cookie_auth`: the request's token comes from the
    /// auth cookie; `identity`: it targets an identity endpoint.
    pub fn check(&self, req: &RequestHeader, cookie_auth: bool, identity: bool) -> Verdict {
        let origin = request_origin(req);
        if req.method == Method::OPTIONS
            && req
                .headers
                .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return match origin {
                Some(o) if self.allows(o.as_bytes()) => Verdict::Preflight,
                Some(o) if same_origin(&o, req) => Verdict::Pass,
                _ => Verdict::Refuse("This origin may not call the gateway"),
            };
        }
        let unsafe_method = !matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if unsafe_method
            && (cookie_auth || identity)
            && let Some(o) = origin
            && !same_origin(&o, req)
            && !self.allows(o.as_bytes())
        {
            return Verdict::Refuse("Cross-site request refused");
        }
        Verdict::Pass
    }

    /// The edge's one call: the origin to make responses readable to, and the verdict.
    pub fn admit(
        &self,
        req: &RequestHeader,
        cookie_auth: bool,
        identity: bool,
    ) -> (Option<HeaderValue>, Verdict) {
        (
            self.allowed_origin(req),
            self.check(req, cookie_auth, identity),
        )
    }

    /// Headers of the answer to an allowed preflight.
    pub fn preflight_headers(&self, req: &RequestHeader, resp: &mut ResponseHeader) {
        if let Some(origin) = self.allowed_origin(req) {
            decorate(resp, origin);
        }
        let _ = resp.insert_header("access-control-allow-methods", ALLOWED_METHODS);
        if let Some(h) = &self.allow_headers {
            let _ = resp.insert_header("access-control-allow-headers", h.clone());
        }
        if let Some(m) = &self.max_age {
            let _ = resp.insert_header("access-control-max-age", m.clone());
        }
    }
}

/// Marks a response readable by an allowed origin, with credentials.
pub fn decorate(resp: &mut ResponseHeader, origin: HeaderValue) {
    let _ = resp.insert_header("access-control-allow-origin", origin);
    let _ = resp.insert_header("access-control-allow-credentials", "true");
    let _ = resp.append_header("vary", "Origin");
}

/// The request's origin: `Origin`, else the scheme and authority of `Referer`. `null` counts
/// as an origin (an opaque one, never allowed).
fn request_origin(req: &RequestHeader) -> Option<String> {
    if let Some(o) = req.headers.get(http::header::ORIGIN) {
        return Some(String::from_utf8_lossy(o.as_bytes()).to_ascii_lowercase());
    }
    let referer = req.headers.get(http::header::REFERER)?.to_str().ok()?;
    let (scheme, rest) = referer.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}").to_ascii_lowercase())
}

fn authority(origin: &str) -> Option<&str> {
    origin.split_once("://").map(|(_, a)| a)
}

/// Does the origin name this gateway (host and port as the client addressed it)?
fn same_origin(origin: &str, req: &RequestHeader) -> bool {
    let Some(host) = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let Some(auth) = authority(origin) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    if auth == host {
        return true;
    }
    // Default ports may be written on one side only.
    let strip = |a: &str| {
        a.strip_suffix(":80")
            .or_else(|| a.strip_suffix(":443"))
            .unwrap_or(a)
            .to_owned()
    };
    strip(auth) == strip(&host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CorsPolicy {
        CorsPolicy::new(&config::Cors::new(&["https://app.example.com".into()], &[], 600).unwrap())
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut all = vec![("host", "gw.example.com")];
        all.extend_from_slice(headers);
        crate::edge::test_request(method, "/api/x", &all)
    }

    #[test]
    fn origins_must_be_exact() {
        for bad in [
            "*",
            "https://*.example.com",
            "app.example.com",
            "https://a.com/path",
        ] {
            assert!(config::Cors::new(&[bad.into()], &[], 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn preflights_from_allowed_origins_are_answered_and_others_refused() {
        let p = policy();
        let pre = |origin: &str| {
            req(
                "OPTIONS",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            )
        };
        assert_eq!(
            p.check(&pre("https://app.example.com"), false, false),
            Verdict::Preflight
        );
        assert!(matches!(
            p.check(&pre("https://evil.example"), false, false),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            p.check(&pre("null"), false, false),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn cookie_authenticated_unsafe_requests_must_come_from_a_known_origin() {
        let p = policy();
        let post = |h: &[(&str, &str)]| req("POST", h);
        assert!(matches!(
            p.check(&post(&[("origin", "https://evil.example")]), true, false),
            Verdict::Refuse(_)
        ));
        assert!(matches!(
            p.check(
                &post(&[("referer", "https://evil.example/page")]),
                true,
                false
            ),
            Verdict::Refuse(_)
        ));
        assert_eq!(
            p.check(&post(&[("origin", "https://app.example.com")]), true, false),
            Verdict::Pass
        );
        assert_eq!(
            p.check(&post(&[("origin", "https://gw.example.com")]), true, false),
            Verdict::Pass
        );
        assert_eq!(
            p.check(
                &post(&[("origin", "http://gw.example.com:80")]),
                true,
                false
            ),
            Verdict::Pass
        );
        // Bearer-authenticated requests cannot be forged cross-site: no check.
        assert_eq!(
            p.check(&post(&[("origin", "https://evil.example")]), false, false),
            Verdict::Pass
        );
        // Identity endpoints are checked whatever the credential.
        assert!(matches!(
            p.check(&post(&[("origin", "https://evil.example")]), false, true),
            Verdict::Refuse(_)
        ));
        // Safe methods pass; no Origin and no Referer (not a browser) passes.
        assert_eq!(
            p.check(
                &req("GET", &[("origin", "https://evil.example")]),
                true,
                false
            ),
            Verdict::Pass
        );
        assert_eq!(p.check(&post(&[]), true, false), Verdict::Pass);
    }
}
