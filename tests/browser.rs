//! A real browser, end to end: Debian's Chromium, driven by `e2e/run.mjs` (playwright-core),
//! opens the page the echo upstream serves at `/app/` through the gateway, registers, signs in
//! (the gateway's HttpOnly, Secure, SameSite=Strict cookie is the only credential; the page
//! keeps no token), calls an owner route with the cookie alone, signs out, and is refused.
//!
//! Needs `node` (>= 20), `e2e/node_modules` (`npm ci` in `e2e/`) and `/usr/bin/chromium`
//! (Debian's `chromium` package, or `CHROMIUM=/path`). Without them the test fails, saying
//! what to install: it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Gateway;
use common::config::{self as cfg, TestConfig};

const BOUND: Duration = Duration::from_secs(180);

/// Default cookie settings (`portcullis_token`, Secure, SameSite=Strict): Chromium treats
/// http://127.0.0.1 as a secure context, so a Secure cookie is kept there.
fn config() -> String {
    TestConfig::new()
        .server("grace_period_secs = 0")
        .store("sqlite://{DIR}/browser.db")
        .default_cookie()
        .fast_bcrypt()
        .upstream("echo", "\"{ECHO}\"", &[])
        // `{*rest}` needs at least one character: `/app/` itself is its own route.
        .route("/app/", "echo", "public", &[])
        .route("/app/{*rest}", "echo", "public", &[])
        .route(
            cfg::OWNER_ROUTE.0,
            "echo",
            "required",
            &[cfg::OWNER_ROUTE.1],
        )
        .build()
}

const INSTALL: &str = "the browser test needs Node.js >= 20 with npm, Debian's Chromium and the \
    e2e packages; .ci/run must run `apt-get install -y nodejs npm chromium` (when `node` or \
    /usr/bin/chromium is missing) and `npm ci --prefix e2e` (no browser download: \
    playwright-core drives /usr/bin/chromium)";

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Fails (never skips) with what is missing and what `.ci/run` must install.
fn preflight(root: &Path) {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let major: u32 = version
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 20 {
                missing.push(format!("node >= 20 (found {version})"));
            }
        }
        _ => missing.push("`node` on PATH".to_owned()),
    }
    if !root
        .join("e2e/node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("e2e/node_modules/playwright-core (run `npm ci` in e2e/)".to_owned());
    }
    if !chromium().is_file() {
        missing.push(format!(
            "{} (Debian package `chromium`)",
            chromium().display()
        ));
    }
    assert!(
        missing.is_empty(),
        "missing: {}.\n{INSTALL}",
        missing.join(", ")
    );
}

#[test]
fn a_real_browser_signs_in_by_httponly_cookie_reaches_its_route_and_signs_out() {
    let root = common::manifest_dir();
    preflight(&root);

    let echo = portcullis::demo::echo::spawn();
    let g = Gateway::start_with(&config(), &[], &[("ECHO", echo.to_string())]);
    let base = format!("http://{}", g.addr);

    // The page is served through the gateway's public route before a browser is involved.
    let page = g.get("/app/", &[]);
    assert_eq!(page.status, 200, "GET /app/: {}", page.text());
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "GET /app/ content-type: {:?}",
        page.header("content-type")
    );
    assert_eq!(page.text(), portcullis::demo::echo::APP_PAGE);

    drive(&root, &base, "/app/", &|| g.stderr());
}

/// Runs `e2e/run.mjs` against the page at `base` + `page_path`; fails with everything it and
/// the gateway (`gateway_stderr`) said unless it reports success.
fn drive(root: &Path, base: &str, page_path: &str, gateway_stderr: &dyn Fn() -> String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new("node")
        .arg(root.join("e2e/run.mjs"))
        .arg(base)
        .current_dir(root)
        .env("CHROMIUM", chromium())
        .env("AUTH_COOKIE", "portcullis_token")
        .env("PAGE_PATH", page_path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}\n{INSTALL}"));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "e2e/run.mjs did not finish within {BOUND:?}\nstdout:\n{}\nstderr:\n{}",
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "e2e/run.mjs {base} failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         gateway stderr:\n{}",
        gateway_stderr()
    );
    assert!(stdout.contains("e2e ok"), "no success line:\n{stdout}");
    eprintln!("{}", stdout.trim());
}

/// The README's first command, clicked through: `portcullis demo` serves its page at `/`, the
/// banner says where, and the browser walks it (fixed ports 8080 and 9090, as `tests/demo.rs`;
/// test binaries run one after another).
#[test]
fn the_demo_page_the_banner_names_is_clickable_in_a_real_browser() {
    let root = common::manifest_dir();
    preflight(&root);
    let dir = tempfile::tempdir().unwrap();
    let stdout_path = dir.path().join("demo.out");
    let stderr_path = dir.path().join("demo.err");
    let mut demo = Command::new(common::bin())
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = "127.0.0.1:9090".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::try_get(admin, "/healthz").is_err() {
        assert!(Instant::now() < deadline, "demo did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let banner = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(
        banner.contains("Open http://127.0.0.1:8080/ in a browser"),
        "{banner}"
    );
    let err = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    drive(&root, "http://127.0.0.1:8080", "/", &err);
    let _ = demo.kill();
    let _ = demo.wait();
    // The demo logs for a person: readable lines, no JSON, no module paths.
    let logs = err();
    assert!(logs.contains("INFO GET / 200"), "{logs}");
    assert!(!logs.lines().any(|l| l.starts_with('{')), "{logs}");
}

#[test]
fn echo_serves_the_page_at_app_and_echoes_everything_else() {
    let echo = portcullis::demo::echo::spawn();
    for path in ["/", "/app/", "/app/index.html", "/app/?x=1"] {
        let r = common::get(echo, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(r.text(), portcullis::demo::echo::APP_PAGE, "{path}");
    }
    for path in ["/app", "/app/other", "/api/app/", "/index.html"] {
        let r = common::get(echo, path, &[("X-Probe", "1")]);
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let seen = r.seen();
        assert_eq!(seen.path, path);
        assert_eq!(seen.one("x-probe").as_deref(), Some("1"));
    }
    let r = send_raw_post(echo, "/app/");
    assert_eq!(r.seen().method, "POST", "only GET and HEAD get the page");
}

fn send_raw_post(addr: std::net::SocketAddr, path: &str) -> common::Response {
    common::send_raw(
        addr,
        &common::request_bytes("POST", path, &[], Some(b"{}".as_slice())),
    )
}
