//! Reload by SIGHUP (CONTRACT 14), black-box: the real gateway, its config file rewritten and
//! the process sent SIGHUP while clients keep it busy; kept-alive connections and new ones,
//! every answer checked.

mod common;

use std::fmt::Write as _;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::config::{EDDSA, TestConfig};
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn config_path(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("portcullis.toml")
}

/// Writes `toml` (placeholders filled as at start) over the gateway's config file.
fn rewrite(gw: &Gateway, toml: &str) {
    let text = render(
        toml,
        &[
            ("LISTEN", gw.addr.to_string()),
            ("ADMIN", gw.admin.to_string()),
            ("DIR", gw.dir.path().to_string_lossy().into_owned()),
            ("KEYS", keys_dir().to_string_lossy().into_owned()),
            (
                "UPSTREAM",
                gw.upstream
                    .as_ref()
                    .map(|u| u.addr.to_string())
                    .unwrap_or_default(),
            ),
        ],
    );
    // Written whole, then renamed over: a reload never reads half a file.
    let tmp = gw.dir.path().join("portcullis.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config_path(gw)).unwrap();
}

fn hangup(gw: &Gateway) {
    let ok = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

fn metric(gw: &Gateway, line_prefix: &str) -> u64 {
    get(gw.admin, "/metrics", &[])
        .text()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = v as u64;
            v
        })
}

fn reloads(gw: &Gateway, result: &str) -> u64 {
    metric(
        gw,
        &format!(r#"portcullis_config_reloads_total{{result="{result}"}}"#),
    )
}

/// Waits until the reload counter for `result` reaches `n`.
#[track_caller]
fn await_reloads(gw: &Gateway, result: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(gw, result) < n {
        assert!(
            Instant::now() < deadline,
            "no {n}th reload {result}; stderr:\n{}",
            gw.stderr()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn sha256_of(path: &PathBuf) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn config_sha256(gw: &Gateway) -> String {
    get(gw.admin, "/readyz", &[]).json()["config_sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn base() -> TestConfig {
    TestConfig::new()
        .no_rate_limits()
        .app(&[])
        .route("/api/{*rest}", "app", "required", &[])
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, what: Result<u16, String>) {
        match what {
            Ok(200) => {
                self.ok.fetch_add(1, Relaxed);
            }
            other => {
                self.failed.fetch_add(1, Relaxed);
                let mut f = self.failures.lock().unwrap();
                if f.len() < 10 {
                    f.push(format!("{other:?}"));
                }
            }
        }
    }
}

fn request(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// One client on one kept-alive connection, reconnecting only when the gateway closes it.
fn kept_alive_client(addr: SocketAddr, token: &str, stop: &AtomicBool, tally: &Tally) {
    let connect = || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let mut s = connect();
    while !stop.load(Relaxed) {
        let answer = s
            .write_all(&request("/api/kept", token))
            .map_err(|e| e.to_string())
            .and_then(|()| read_response(&mut s));
        let close = answer
            .as_ref()
            .ok()
            .and_then(|r| r.header("connection"))
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        tally.record(answer.map(|r| r.status));
        if close {
            s = connect();
        }
    }
}

/// One client opening a new connection for every request.
fn new_connection_client(addr: SocketAddr, token: &str, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(Relaxed) {
        let answer = try_send_raw(
            addr,
            &request_bytes(
                "GET",
                "/api/new",
                &[("Authorization", &format!("Bearer {token}"))],
                None,
            ),
        );
        tally.record(answer.map(|r| r.status));
    }
}

#[test]
fn a_reload_under_continuous_load_fails_no_request_and_its_new_route_answers_at_once() {
    let gw = Gateway::start(&base().build(), &[]);
    let token = token_for(&new_sub());
    assert_eq!(
        gw.get("/api/x", &[("Authorization", &format!("Bearer {token}"))])
            .status,
        200
    );
    assert_eq!(gw.get("/added-0/x", &[]).status, 404);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for i in 0..6 {
        let (token, stop, tally) = (token.clone(), Arc::clone(&stop), Arc::clone(&tally));
        let addr = gw.addr;
        clients.push(thread::spawn(move || {
            if i % 2 == 0 {
                kept_alive_client(addr, &token, &stop, &tally);
            } else {
                new_connection_client(addr, &token, &stop, &tally);
            }
        }));
    }
    thread::sleep(Duration::from_millis(300));

    // Ten reloads, each adding a route (and keeping the ones the load uses): the new route
    // answers right after its SIGHUP, while the load never sees anything but 200.
    let mut took = Vec::new();
    for n in 1..=10u64 {
        let mut config = base();
        for k in 0..n {
            config = config.route(&format!("/added-{k}/{{*rest}}"), "app", "public", &[]);
        }
        rewrite(&gw, &config.build());
        let sent = Instant::now();
        hangup(&gw);
        let path = format!("/added-{}/x", n - 1);
        loop {
            if gw.get(&path, &[]).status == 200 {
                took.push(sent.elapsed());
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(10),
                "route {path} never answered"
            );
            thread::sleep(Duration::from_millis(1));
        }
        await_reloads(&gw, "ok", n);
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    let (ok, failed) = (tally.ok.load(Relaxed), tally.failed.load(Relaxed));
    took.sort();
    eprintln!(
        "reload under load: {ok} requests answered 200, {failed} failed; SIGHUP to new route: median {:?}, longest {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert_eq!(
        failed,
        0,
        "requests failed across reloads: {:?}",
        tally.failures.lock().unwrap()
    );
    assert!(
        ok >= 2000,
        "too little load to mean anything: {ok} requests"
    );
    assert_eq!(reloads(&gw, "ok"), 10);
    assert_eq!(reloads(&gw, "error"), 0);
    assert_eq!(config_sha256(&gw), sha256_of(&config_path(&gw)));
    thread::sleep(Duration::from_millis(100)); // the log writer's batch
    assert!(
        gw.stderr().matches("config reloaded").count() == 10,
        "one line per reload:\n{}",
        gw.stderr()
    );
}

#[test]
fn an_invalid_reload_changes_nothing_and_logs_one_line_per_problem() {
    let gw = Gateway::start(&base().build(), &[]);
    let sha_before = config_sha256(&gw);
    assert_eq!(sha_before, sha256_of(&config_path(&gw)));
    let token = token_for(&new_sub());
    let bearer = format!("Bearer {token}");

    // Two problems at once: a route to an upstream that does not exist, and a bcrypt cost
    // out of range; the route `/new` beside them must not go live.
    let broken = base()
        .route("/new/{*rest}", "app", "public", &[])
        .route("/ghost/{*rest}", "nowhere", "public", &[])
        .raw("[password]\nbcrypt_cost = 99\n")
        .build();
    rewrite(&gw, &broken);
    hangup(&gw);
    await_reloads(&gw, "error", 1);
    assert_eq!(gw.get("/api/x", &[("Authorization", &bearer)]).status, 200);
    assert_eq!(gw.get("/new/x", &[]).status, 404);
    assert_eq!(config_sha256(&gw), sha_before);
    // The log writer batches lines: give the second a moment to be written.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stderr = gw.stderr();
    while stderr.matches("config reload refused").count() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        stderr = gw.stderr();
    }
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("config reload refused"))
        .collect();
    assert_eq!(refused.len(), 2, "one line per problem:\n{stderr}");
    assert!(refused.iter().any(|l| l.contains("nowhere")), "{refused:?}");
    assert!(
        refused.iter().any(|l| l.contains("bcrypt_cost")),
        "{refused:?}"
    );

    // A file that is not TOML, and a file that is gone: refused the same way.
    std::fs::write(config_path(&gw), "[server\nlisten = ").unwrap();
    hangup(&gw);
    await_reloads(&gw, "error", 2);
    std::fs::remove_file(config_path(&gw)).unwrap();
    hangup(&gw);
    await_reloads(&gw, "error", 3);
    assert_eq!(gw.get("/api/x", &[("Authorization", &bearer)]).status, 200);
    assert_eq!(config_sha256(&gw), sha_before);
    assert_eq!(reloads(&gw, "ok"), 0);

    // A good file afterwards is taken.
    rewrite(
        &gw,
        &base().route("/new/{*rest}", "app", "public", &[]).build(),
    );
    hangup(&gw);
    await_reloads(&gw, "ok", 1);
    assert_eq!(gw.get("/new/x", &[]).status, 200);
}

#[test]
fn a_setting_that_takes_a_restart_is_named_and_the_rest_of_the_reload_applies() {
    let gw = Gateway::start(&base().build(), &[]);
    let moved = base()
        .route("/new/{*rest}", "app", "public", &[])
        .build()
        .replace("{ADMIN}", &dead_addr().to_string());
    rewrite(&gw, &moved);
    hangup(&gw);
    await_reloads(&gw, "ok", 1);
    assert_eq!(gw.get("/new/x", &[]).status, 200);
    // Still on the address it started with.
    assert_eq!(get(gw.admin, "/healthz", &[]).status, 200);
    thread::sleep(Duration::from_millis(100)); // the log writer's batch
    assert!(
        gw.stderr()
            .lines()
            .any(|l| l.contains("takes a restart") && l.contains("server.admin_listen")),
        "{}",
        gw.stderr()
    );
}

/// EdDSA config signing with `key` as `kid`, trusting `previous` (kid, public key file).
fn eddsa(key: &str, kid: &str, previous: &[(&str, &str)]) -> String {
    let mut t = format!(
        "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{{KEYS}}/{key}\"\nkid = \"{kid}\"\n\
         issuer = \"portcullis\"\naudience = \"portcullis\"\nleeway_secs = 30\n"
    );
    for (kid, file) in previous {
        let _ = write!(
            t,
            "\n[[tokens.previous_keys]]\nkid = \"{kid}\"\npublic_key_file = \"{{KEYS}}/{file}\"\n"
        );
    }
    t
}

fn jwks_kids(gw: &Gateway) -> Vec<String> {
    let mut kids: Vec<String> = gw.get("/.well-known/jwks.json", &[]).json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

#[test]
fn keys_rotate_by_reload_and_tokens_of_the_previous_key_stay_valid_until_it_is_dropped() {
    let _ = EDDSA; // the shared EdDSA config uses the same fixture keys
    let config = |tokens: &str| base().fast_bcrypt().tokens(tokens).build();
    let gw = Gateway::start(&config(&eddsa("ed25519-old.pem", "old", &[])), &[]);
    let sub = new_sub();
    let old = sign_pem(
        Algorithm::EdDSA,
        "ed25519-old.pem",
        Some("old"),
        &claims(&sub),
    );
    let new = sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("new"), &claims(&sub));
    let status = |t: &str| {
        gw.get("/api/x", &[("Authorization", &format!("Bearer {t}"))])
            .status
    };
    assert_eq!((status(&old), status(&new)), (200, 401));
    assert_eq!(jwks_kids(&gw), ["old"]);

    // Rotate: sign with the new key, keep trusting the old one.
    rewrite(
        &gw,
        &config(&eddsa(
            "ed25519.pem",
            "new",
            &[("old", "ed25519-old.pub.pem")],
        )),
    );
    hangup(&gw);
    await_reloads(&gw, "ok", 1);
    assert_eq!((status(&old), status(&new)), (200, 200));
    assert_eq!(jwks_kids(&gw), ["new", "old"]);
    // What the gateway mints now carries the new kid and passes.
    let registered = gw.raw(&request_bytes(
        "POST",
        "/api/v1/auth/register",
        &[("Content-Type", "application/json")],
        Some(
            json!({"email": format!("{sub}@example.com"), "password": "correct horse battery"})
                .to_string()
                .as_bytes(),
        ),
    ));
    assert_eq!(registered.status, 201, "{}", registered.text());
    let minted = registered.json()["token"].as_str().unwrap().to_owned();
    let header = jsonwebtoken::decode_header(&minted).unwrap();
    assert_eq!(header.kid.as_deref(), Some("new"));
    assert_eq!(status(&minted), 200);

    // Retire the old key for good.
    rewrite(&gw, &config(&eddsa("ed25519.pem", "new", &[])));
    hangup(&gw);
    await_reloads(&gw, "ok", 2);
    assert_eq!(
        (status(&old), status(&new), status(&minted)),
        (401, 200, 200)
    );
    assert_eq!(jwks_kids(&gw), ["new"]);
}

/// Issuers follow reloads: one added by a reload gets its refresher (its tokens pass, readiness
/// waits for its first fetch), one removed by a reload stops being fetched and trusted.
#[test]
fn an_issuer_added_by_a_reload_is_fetched_and_trusted_and_one_removed_is_dropped() {
    let (jwks, fetches) = ed25519_jwks_server("ext1");
    let gw = Gateway::start(&base().build(), &[]);
    let external = sign_pem(
        Algorithm::EdDSA,
        "ed25519.pem",
        Some("ext1"),
        &claims_with(&new_sub(), |c| {
            c.insert("iss".into(), json!("https://ext.example"));
            c.insert("aud".into(), json!("ext-aud"));
        }),
    );
    let status = || {
        gw.get(
            "/api/x",
            &[("Authorization", &format!("Bearer {external}"))],
        )
        .status
    };
    assert_eq!(status(), 401);
    let with_issuer = base()
        .section(&format!(
            "[[issuer]]\nname = \"ext\"\njwks_url = \"{jwks}\"\nissuer = \"https://ext.example\"\n\
             audience = \"ext-aud\"\nrefresh_secs = 1\nmin_refresh_secs = 1\n"
        ))
        .build();
    rewrite(&gw, &with_issuer);
    hangup(&gw);
    await_reloads(&gw, "ok", 1);
    gw.wait_ready(Duration::from_secs(5), "the new issuer's first fetch");
    assert_eq!(status(), 200);
    assert!(fetches.load(Relaxed) >= 1);

    rewrite(&gw, &base().build());
    hangup(&gw);
    await_reloads(&gw, "ok", 2);
    assert_eq!(status(), 401, "the removed issuer is no longer trusted");
    let after = fetches.load(Relaxed);
    thread::sleep(Duration::from_millis(2500));
    assert!(
        fetches.load(Relaxed) <= after + 1,
        "the removed issuer's refresher goes on fetching: {after} -> {}",
        fetches.load(Relaxed)
    );
}

/// The config before and after `a_reload_changes_cors_cookie_claim_rules_limits_and_assertions`:
/// each setting of CONTRACT 14's list that is not a route, upstream, key or issuer.
fn settings(origin: &str, cookie: &str, role: &str, per_ip: u32, assertion: bool) -> String {
    let mut c = TestConfig::new()
        .default_cookie()
        .cookie(&format!("name = \"{cookie}\""))
        .section(&format!("[cors]\nallowed_origins = [\"{origin}\"]\n"))
        .section(&format!(
            "[rate_limit]\nper_ip_per_minute = {per_ip}\nfailed_signins_per_email_per_minute = 1000\n"
        ));
    if assertion {
        c = c.section(
            "[assertion]\nprivate_key_file = \"{KEYS}/ed25519.pem\"\nkid = \"assert-1\"\n",
        );
    }
    c.app(&[&format!("assertion = {assertion}")])
        .route("/api/{*rest}", "app", "required", &[])
        .route(
            "/admin/{*rest}",
            "app",
            "required",
            &[&format!("require = {{ roles = \"{role}\" }}")],
        )
        .build()
}

#[test]
fn a_reload_changes_cors_cookie_claim_rules_limits_and_assertions() {
    let gw = Gateway::start(
        &settings("https://a.example", "pc_old", "admin", 1000, false),
        &[],
    );
    let sub = new_sub();
    let staff = hs256(&claims_with(&sub, |c| {
        c.insert("roles".into(), json!(["staff"]));
    }));
    let preflight = |origin: &str| {
        gw.raw(&request_bytes(
            "OPTIONS",
            "/api/x",
            &[("Origin", origin), ("Access-Control-Request-Method", "GET")],
            None,
        ))
    };
    let with_cookie = |name: &str| {
        gw.get("/api/x", &[("Cookie", &format!("{name}={staff}"))])
            .status
    };
    let admin = || {
        gw.get("/admin/x", &[("Authorization", &format!("Bearer {staff}"))])
            .status
    };
    let bad_signin = || {
        gw.raw(&request_bytes(
            "POST",
            "/api/v1/auth/signin",
            &[("Content-Type", "text/plain")],
            Some(b"x"),
        ))
        .status
    };
    let asserted = || {
        let r = gw.get("/api/x", &[("Authorization", &format!("Bearer {staff}"))]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.seen().one("x-portcullis-assertion").is_some()
    };

    assert_eq!(preflight("https://a.example").status, 204);
    assert_eq!(preflight("https://b.example").status, 403);
    assert_eq!(with_cookie("pc_old"), 200);
    assert_eq!(with_cookie("pc_new"), 401);
    assert_eq!(admin(), 403);
    for _ in 0..5 {
        assert_ne!(bad_signin(), 429);
    }
    assert!(!asserted());

    rewrite(
        &gw,
        &settings("https://b.example", "pc_new", "staff", 3, true),
    );
    hangup(&gw);
    await_reloads(&gw, "ok", 1);

    assert_eq!(preflight("https://b.example").status, 204);
    assert_eq!(
        preflight("https://b.example").header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert_eq!(preflight("https://a.example").status, 403);
    assert_eq!(with_cookie("pc_new"), 200);
    assert_eq!(with_cookie("pc_old"), 401);
    assert_eq!(admin(), 200);
    // The new limit of 3 per minute: the next attempts are refused.
    let statuses: Vec<u16> = (0..4).map(|_| bad_signin()).collect();
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(asserted());
    let jwks = gw.get("/.well-known/jwks.json", &[]).json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == "assert-1"),
        "{jwks}"
    );
}
