//! The edge, black-box: the real `portcullis serve` in front of a recording upstream, one module
//! per CONTRACT section it pins (1-5, 7 and 10) and every rule of docs/edge-decisions.md. The
//! configs are built from the shared pieces in `tests/common/config.rs`.

#[path = "../common/mod.rs"]
mod common;

mod claims;
mod credentials;
mod keys;
mod ops;
mod paths;
mod policy;
mod request_id;
mod routing;
mod spoofing;
mod timing;
mod tokens;
mod upstreams;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::config::{self as cfg, TestConfig};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

/// The edge tests' gateway: `tokens` (one of `cfg::HS256`, `cfg::EDDSA`, ...), the upstream
/// `app` at the recording upstream, and a route of each kind; `upstreams` and `routes` are
/// extra TOML.
fn config(tokens: &str, upstreams: &str, routes: &str) -> String {
    TestConfig::new()
        .server("threads = 2")
        .tokens(tokens)
        .cookie("secure = false")
        .cookie("same_site = \"Lax\"")
        .app(&["connect_timeout_ms = 1000", "read_timeout_ms = 5000"])
        .raw(upstreams)
        .owner_route()
        .route("/api/health", "app", "public", &[])
        .route("/api/{*rest}", "app", "public", &[])
        .route("/public/{*rest}", "app", "public", &[])
        .route("/opt/{*rest}", "app", "optional", &[])
        .route("/req/{*rest}", "app", "required", &[])
        .route("/fwd/{*rest}", "app", "required", &["forward_token = true"])
        .raw(routes)
        .build()
}

fn hs_gateway() -> Gateway {
    Gateway::start(&config(cfg::HS256, "", ""), &[])
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    gw.get(path, &[("Authorization", &format!("Bearer {token}"))])
}

fn cookie(gw: &Gateway, path: &str, cookie_header: &str) -> Response {
    gw.get(path, &[("Cookie", cookie_header)])
}

/// `token` is rejected on a required route with 401 `code`, as Bearer and as cookie, and
/// the upstream never sees the request.
#[track_caller]
fn assert_rejected(gw: &Gateway, token: &str, code: &str) {
    let before = gw.upstream.as_ref().map(Upstream::proxied_count);
    let r = bearer(gw, "/req/x", token);
    assert_401(&r, code, true);
    assert_no_token_echo(&r, token);
    let r = cookie(gw, "/req/x", &format!("pc_tok={token}"));
    assert_401(&r, code, true);
    assert_no_token_echo(&r, token);
    let after = gw.upstream.as_ref().map(Upstream::proxied_count);
    assert_eq!(
        before, after,
        "a rejected token must never reach the upstream"
    );
}

#[track_caller]
fn assert_accepted(gw: &Gateway, token: &str, sub: &str) -> Seen {
    let r = bearer(gw, "/req/x", token);
    assert_eq!(r.status, 200, "token must be accepted: {}", r.text());
    let seen = r.seen();
    let ids = seen.all("x-user-id");
    assert_eq!(ids, vec![sub.to_string()], "upstream X-User-Id");
    seen
}

/// Generated request ids are UUIDs (RFC 9562 version 8: per-thread random prefix + keyed counter).
fn is_generated_request_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 8)
}
