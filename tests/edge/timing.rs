//! CONTRACT section 15: `Server-Timing` with the gateway's own time, opt-in.

use super::*;

fn timed_gateway() -> Gateway {
    let dead = dead_addr();
    let cfg = TestConfig::new()
        .server("server_timing = true")
        .tokens(cfg::HS256)
        .cookie("secure = false")
        .app(&["connect_timeout_ms = 1000", "read_timeout_ms = 5000"])
        .upstream(
            "gone",
            &format!("\"{dead}\""),
            &["connect_timeout_ms = 300"],
        )
        .route("/public/{*rest}", "app", "public", &[])
        .route("/req/{*rest}", "app", "required", &[])
        .route("/gone/{*rest}", "gone", "public", &[])
        .build();
    Gateway::start(&cfg, &[])
}

/// The one `Server-Timing` field of `r`, as `(name, dur ms)` per entry, in order.
#[track_caller]
fn timing(r: &Response) -> Vec<(String, f64)> {
    let all = r.headers_all("server-timing");
    assert_eq!(all.len(), 1, "one Server-Timing field: {all:?}");
    all[0]
        .split(", ")
        .map(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap().trim().to_owned();
            let dur = parts
                .find_map(|p| p.strip_prefix("dur="))
                .map_or(f64::NAN, |d| d.parse::<f64>().expect("dur is a number"));
            (name, dur)
        })
        .collect()
}

fn names(t: &[(String, f64)]) -> Vec<&str> {
    t.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn server_timing_is_off_by_default_and_an_upstreams_own_passes_untouched() {
    let gw = hs_gateway();
    let r = gw.get("/public/x", &[("x-test-server-timing", "db;dur=5")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers_all("server-timing"), ["db;dur=5"]);
    let r = gw.get("/req/x", &[]);
    assert_eq!(r.status, 401);
    assert!(r.headers_all("server-timing").is_empty(), "{:?}", r.headers);
}

#[test]
fn a_proxied_response_splits_edge_auth_and_upstream_and_keeps_the_upstreams_entries_after_ours() {
    let gw = timed_gateway();
    let token = token_for(&new_sub());
    let r = gw.get(
        "/req/x",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("x-test-delay-ms", "60"),
            ("x-test-server-timing", "db;dur=5.5, cache;desc=\"miss\""),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let t = timing(&r);
    assert_eq!(
        names(&t),
        ["edge", "auth", "upstream", "db", "cache"],
        "{t:?}"
    );
    let (edge, auth, upstream) = (t[0].1, t[1].1, t[2].1);
    assert!(
        upstream >= 60.0,
        "the upstream's 60 ms are upstream time: {t:?}"
    );
    assert!(edge < 60.0, "and not the gateway's: {t:?}");
    assert!(
        auth > 0.0 && auth <= edge,
        "verification is part of edge: {t:?}"
    );
    assert!(
        r.header("server-timing")
            .unwrap()
            .ends_with("db;dur=5.5, cache;desc=\"miss\""),
        "the upstream's entries verbatim"
    );
}

#[test]
fn responses_the_gateway_makes_carry_edge_and_auth_only() {
    let gw = timed_gateway();
    // A refusal, an identity endpoint, the JWKS document's 404 (HS256 publishes no keys) and
    // a 502 after a failed upstream attempt: all the gateway's own.
    for (path, status) in [
        ("/req/x", 401),
        ("/api/v1/auth/me", 401),
        ("/.well-known/jwks.json", 404),
        ("/gone/x", 502),
    ] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let t = timing(&r);
        assert_eq!(names(&t), ["edge", "auth"], "{path}: {t:?}");
        assert!(
            t.iter().all(|(_, d)| *d >= 0.0 && *d < 5_000.0),
            "{path}: {t:?}"
        );
    }
}
