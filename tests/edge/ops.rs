//! CONTRACT sections 1 and 7, the process: the admin listener, readiness, metrics, logs without
//! secrets, and graceful shutdown on SIGTERM and SIGINT.

use super::*;

#[test]
fn admin_healthz_is_200() {
    let gw = hs_gateway();
    let r = get(gw.admin, "/healthz", &[]);
    assert_eq!(r.status, 200);
}

#[test]
fn admin_readyz_is_200_with_a_reachable_store() {
    let gw = hs_gateway();
    gw.wait_ready(
        Duration::from_secs(10),
        "readyz never 200 with a local SQLite store",
    );
}

#[test]
fn unreachable_store_is_not_a_config_error_and_the_edge_still_serves() {
    let dead: SocketAddr = dead_addr();
    let cfg = config(cfg::HS256, "", "").replace(
        "sqlite://{DIR}/p.db",
        &format!("postgres://portcullis:portcullis@{dead}/portcullis?sslmode=disable"),
    );
    let gw = Gateway::start(&cfg, &[]);
    assert_eq!(get(gw.admin, "/healthz", &[]).status, 200);
    let r = get(gw.admin, "/readyz", &[]);
    assert_eq!(r.status, 503, "not ready without a store: {}", r.text());
    let sub = new_sub();
    assert_accepted(&gw, &token_for(&sub), &sub);
    assert_401(&gw.get("/req/x", &[]), "missing_token", false);
}

#[test]
fn admin_metrics_are_prometheus_text_with_portcullis_prefix() {
    let gw = hs_gateway();
    assert_eq!(gw.get("/public/x", &[]).status, 200);
    let r = get(gw.admin, "/metrics", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!samples.is_empty(), "no metrics at all:\n{text}");
    for l in samples {
        assert!(
            l.starts_with("portcullis_"),
            "metric without the portcullis_ prefix: {l}"
        );
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut gw = hs_gateway();
    let addr = gw.addr;
    let inflight =
        std::thread::spawn(move || get(addr, "/public/slow", &[("x-test-delay-ms", "1500")]));
    // let the request reach the upstream
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.up().proxied_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "slow request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = gw
        .terminate(Duration::from_secs(40))
        .expect("portcullis must exit after SIGTERM");
    assert!(
        status.success(),
        "SIGTERM must end with exit 0, got {status}\nstderr:\n{}",
        gw.stderr()
    );
    let r = inflight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request must finish: {}",
        r.text()
    );
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "no longer accepting"
    );
}

#[test]
fn logs_are_json_lines_with_one_access_line_per_request_and_follow_rust_log() {
    let gw = hs_gateway();
    let sub = new_sub();
    let token = token_for(&sub);
    assert_eq!(
        gw.get("/public/x", &[("X-Request-Id", "log-check-1")])
            .status,
        200
    );
    assert_eq!(bearer(&gw, &format!("/req/{sub}"), "garbage").status, 401);
    std::thread::sleep(Duration::from_millis(200));
    let logs = gw.stderr();
    let mut access = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["target"] == "access" {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 2, "{logs}");
    let first = &access[0]["fields"];
    assert_eq!(first["request_id"], "log-check-1");
    assert_eq!(first["status"], 200);
    assert!(first["latency_us"].is_u64());
    assert_eq!(access[1]["fields"]["code"], "invalid_token");
    assert!(!logs.contains(&token) && !logs.contains("garbage"));

    let quiet = Gateway::start(&config(cfg::HS256, "", ""), &[("RUST_LOG", "warn")]);
    assert_eq!(quiet.get("/public/x", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !quiet.stderr().contains("\"access\""),
        "RUST_LOG=warn hides access lines"
    );
}

#[test]
fn tokens_stay_out_of_the_logs_even_at_debug_and_on_proxy_errors() {
    // forward_token keeps the Bearer header on the way upstream, where Pingora's debug log
    // prints the whole request header; a dead upstream makes Pingora log an error line
    // naming the request, query string included by default.
    let sub = new_sub();
    let token = token_for(&sub);
    let gw = Gateway::start(&config(cfg::HS256, "", ""), &[("RUST_LOG", "debug")]);
    let r = bearer(&gw, &format!("/fwd/{sub}"), &token);
    assert_eq!(r.status, 200);
    assert!(
        r.seen().one("authorization").is_some(),
        "forward_token kept the credential"
    );
    let dead = config(cfg::HS256, "", "").replace("{UPSTREAM}", &dead_addr().to_string());
    let gw2 = Gateway::start(&dead, &[("RUST_LOG", "debug")]);
    let r = gw2.get(&format!("/public/x?access_token={token}"), &[]);
    assert_eq!(r.status, 502);
    std::thread::sleep(Duration::from_millis(200));
    for logs in [gw.stderr(), gw2.stderr()] {
        assert!(!logs.contains(&token), "a token reached the logs at debug");
    }
}

#[test]
fn sigterm_on_an_idle_gateway_exits_0_without_waiting_out_the_grace_period() {
    // grace_period_secs defaults to 10: with nothing in flight the gateway must not wait it out.
    let mut gw = hs_gateway();
    assert_eq!(gw.get("/public/x", &[]).status, 200);
    let started = Instant::now();
    let status = gw
        .terminate(Duration::from_secs(20))
        .expect("portcullis must exit after SIGTERM");
    assert!(status.success(), "exit 0, got {status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "an idle gateway took {:?} to stop",
        started.elapsed()
    );
}

#[test]
fn sigint_drains_like_sigterm() {
    let mut gw = hs_gateway();
    let addr = gw.addr;
    let inflight =
        std::thread::spawn(move || get(addr, "/public/slow", &[("x-test-delay-ms", "800")]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.up().proxied_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "slow request never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::process::Command::new("kill")
        .args(["-INT", &gw.pid().to_string()])
        .status();
    let r = inflight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request must finish: {}",
        r.text()
    );
    let status = gw
        .terminate(Duration::from_secs(20))
        .expect("portcullis must exit after SIGINT");
    assert!(status.success(), "exit 0, got {status}");
}

#[test]
fn database_url_overrides_store_url() {
    // store.url points nowhere; DATABASE_URL points at a local SQLite file: ready
    let dead = dead_addr();
    let cfg = config(cfg::HS256, "", "").replace(
        "sqlite://{DIR}/p.db",
        &format!("postgres://portcullis:portcullis@{dead}/portcullis?sslmode=disable"),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/override.db", dir.path().display());
    let gw = Gateway::start(&cfg, &[("DATABASE_URL", url.as_str())]);
    gw.wait_ready(
        Duration::from_secs(10),
        "DATABASE_URL must override store.url",
    );
}

/// A log consumer that stops reading (a stalled shipper, a full pipe) must not stop the
/// gateway: stderr is a pipe nobody reads, and requests go on being answered long after the
/// pipe and the log queue (a few MiB of access lines) are full; what did not fit is counted.
#[test]
fn a_stalled_log_reader_never_stops_the_gateway() {
    let gw = Gateway::start_with_unread_stderr(
        &TestConfig::new()
            .app(&[])
            .route("/public/{*rest}", "app", "public", &[])
            .build(),
    );
    let (listen, admin) = (gw.addr, gw.admin);
    let dropped = || {
        get(admin, "/metrics", &[])
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_log_lines_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the dropped-lines counter is exposed")
    };
    let started = Instant::now();
    // 100k access lines are far more than any pipe plus the queue's byte bound hold; the
    // loop ends at the first batch after which drops are counted.
    let mut answered = 0;
    while answered < 100_000 {
        for _ in 0..5_000 {
            let r = try_get(listen, &format!("/public/{answered}")).unwrap_or_else(|e| {
                panic!("request {answered} after {:?}: {e}", started.elapsed())
            });
            assert_eq!(r.status, 200, "request {answered}");
            answered += 1;
        }
        if dropped() > 0 {
            break;
        }
    }
    let dropped = dropped();
    eprintln!(
        "{answered} requests with stderr never read: {:?}, {dropped} log lines dropped",
        started.elapsed()
    );
    assert!(
        dropped > 0,
        "{answered} access lines fit neither a pipe nor the log queue: some must be dropped"
    );
}
