//! CORS for configured frontends and the CSRF (Origin) defence, through the real binary.

mod common;

use common::config::TestConfig;
use common::{Gateway, assert_problem, new_sub, request_bytes, token_for};

const FRONTEND: &str = "https://app.example.com";

fn config() -> String {
    TestConfig::new()
        .store("sqlite://{DIR}/c.db")
        .fast_bcrypt()
        .section("[cors]\nallowed_origins = [\"https://app.example.com\"]\n")
        .app(&[])
        .owner_route()
        .build()
}

fn preflight(g: &Gateway, origin: &str, path: &str) -> common::Response {
    g.raw(&request_bytes(
        "OPTIONS",
        path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    ))
}

#[test]
fn preflight_from_a_configured_origin_is_answered_at_the_edge() {
    let g = Gateway::start(&config(), &[]);
    let sub = new_sub();
    let r = preflight(&g, FRONTEND, &format!("/api/{sub}/tasks/1"));
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(FRONTEND));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        r.header("access-control-allow-headers")
            .unwrap()
            .contains("content-type")
    );
    assert!(r.header("access-control-max-age").is_some());
    let r = preflight(&g, FRONTEND, "/api/v1/auth/signin");
    assert_eq!(r.status, 204);
    g.up().assert_not_called();
}

#[test]
fn preflight_from_another_origin_is_403() {
    let g = Gateway::start(&config(), &[]);
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.com.evil.example",
    ] {
        let r = preflight(&g, origin, "/api/v1/auth/signin");
        assert_problem(&r, 403, "forbidden");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    g.up().assert_not_called();
}

#[test]
fn an_allowed_origin_can_read_proxied_and_gateway_made_responses() {
    let g = Gateway::start(&config(), &[]);
    let sub = new_sub();
    let path = format!("/api/{sub}/tasks/1");
    let ok = g.get(
        &path,
        &[
            ("Origin", FRONTEND),
            ("Authorization", &format!("Bearer {}", token_for(&sub))),
        ],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(FRONTEND));
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert!(ok.headers_all("vary").iter().any(|v| v.contains("Origin")));
    let denied = g.get(&path, &[("Origin", FRONTEND)]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("access-control-allow-origin"), Some(FRONTEND));
    // Another origin is told nothing.
    let other = g.get(&path, &[("Origin", "https://evil.example")]);
    assert!(other.header("access-control-allow-origin").is_none());
}

#[test]
fn a_cookie_authenticated_unsafe_request_from_a_foreign_origin_is_403_and_not_proxied() {
    let g = Gateway::start(&config(), &[]);
    let sub = new_sub();
    let path = format!("/api/{sub}/tasks/1");
    let cookie = format!("pc_tok={}", token_for(&sub));
    for (name, value) in [
        ("Origin", "https://evil.example"),
        ("Referer", "https://evil.example/x"),
    ] {
        let r = g.raw(&request_bytes(
            "POST",
            &path,
            &[(name, value), ("Cookie", &cookie)],
            Some(b"{}"),
        ));
        assert_problem(&r, 403, "forbidden");
    }
    g.up().assert_not_called();
    // The same request from the gateway's own origin, or from the configured frontend, passes.
    for origin in ["http://localhost", FRONTEND] {
        let r = g.raw(&request_bytes(
            "POST",
            &path,
            &[("Origin", origin), ("Cookie", &cookie)],
            Some(b"{}"),
        ));
        assert_eq!(r.status, 200, "{origin}: {}", r.text());
    }
    // A Bearer token cannot be forged cross-site: no Origin check.
    let r = g.raw(&request_bytes(
        "POST",
        &path,
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &format!("Bearer {}", token_for(&sub))),
        ],
        Some(b"{}"),
    ));
    assert_eq!(r.status, 200);
    // Safe methods are never refused for their origin.
    let r = g.get(
        &path,
        &[("Origin", "https://evil.example"), ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn identity_endpoints_refuse_foreign_origins() {
    let g = Gateway::start(&config(), &[]);
    let body = br#"{"email":"csrf@example.com","password":"correct horse battery"}"#;
    let r = g.raw(&request_bytes(
        "POST",
        "/api/v1/auth/register",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        Some(body),
    ));
    assert_problem(&r, 403, "forbidden");
    let r = g.raw(&request_bytes(
        "POST",
        "/api/v1/auth/register",
        &[("Content-Type", "application/json"), ("Origin", FRONTEND)],
        Some(body),
    ));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(FRONTEND));
}

#[test]
fn wildcard_or_malformed_origins_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[tokens]\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\n[cors]\nallowed_origins = [\"*\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("PORTCULLIS_TEST_SECRET", common::SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cors.allowed_origins"));
}
