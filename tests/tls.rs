//! TLS on the public listener (`[server.tls]`), for real: a certificate made by the `openssl`
//! CLI at test time, the gateway terminating TLS with it, and the `curl` CLI as the client,
//! verifying the chain and the host name. HTTP/2 is offered by ALPN and HTTP/1.1 still works;
//! the edge's rules hold over both; plain HTTP to the TLS port gets nothing; a key file that is
//! not a PKCS#8 private key is a config error.
//!
//! `openssl` and `curl` must be installed: without them these tests fail, they never skip.

mod common;

use std::path::Path;
use std::time::Duration;

use common::config::TestConfig;
use common::tls::{Cert, curl_base, run_tool};
use common::{Gateway, Seen};
use serde_json::Value;

/// A gateway serving TLS with `{CERT}` / `{KEY}`, an owner route and a public one.
fn config() -> String {
    TestConfig::new()
        .server("grace_period_secs = 0")
        .server_table("[server.tls]\ncert_file = \"{CERT}\"\nkey_file = \"{KEY}\"\n")
        .store("sqlite://{DIR}/tls.db")
        .fast_bcrypt()
        .app(&[])
        .owner_route()
        .route("/public/{*rest}", "app", "public", &[])
        .build()
}

// ---------------------------------------------------------------------------------------------
// tools
// ---------------------------------------------------------------------------------------------

fn start(cert: &Cert) -> Gateway {
    Gateway::start_with(&config(), &[], &cert.vars(&cert.key()))
}

/// What curl reports about one exchange.
#[derive(Debug)]
struct Exchange {
    /// curl's exit status
    ok: bool,
    /// `%{http_version}`: "2", "1.1", or "0" when nothing came back
    version: String,
    /// `%{http_code}`: "000" when nothing came back
    code: String,
    headers: String,
    body: String,
    stderr: String,
}

impl Exchange {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:#?}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// `curl` against the gateway as `https://localhost:<port>` (resolved to 127.0.0.1), verifying
/// the server against the test certificate. `protocol` is `--http2` or `--http1.1`.
fn curl(gw: &Gateway, cert: &Cert, protocol: &str, path: &str, headers: &[&str]) -> Exchange {
    let port = gw.addr.port();
    curl_url(
        &format!("https://localhost:{port}{path}"),
        port,
        cert,
        protocol,
        headers,
    )
}

fn curl_url(url: &str, port: u16, cert: &Cert, protocol: &str, headers: &[&str]) -> Exchange {
    let out_dir = tempfile::tempdir().unwrap();
    let head_file = out_dir.path().join("headers");
    let body_file = out_dir.path().join("body");
    let mut args = curl_base(port, cert);
    for a in [
        protocol,
        "--max-time",
        "15",
        "-D",
        head_file.to_str().unwrap(),
        "-o",
        body_file.to_str().unwrap(),
        "-w",
        "%{http_version} %{http_code}",
    ] {
        args.push(a.to_owned());
    }
    for h in headers {
        args.push("-H".to_owned());
        args.push((*h).to_owned());
    }
    args.push(url.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("curl", &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, code) = stdout
        .trim()
        .split_once(' ')
        .map(|(v, c)| (v.to_string(), c.to_string()))
        .unwrap_or_default();
    Exchange {
        ok: out.status.success(),
        version,
        code,
        headers: std::fs::read_to_string(&head_file).unwrap_or_default(),
        body: std::fs::read_to_string(&body_file).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_proxied_with_identity(x: &Exchange, version: &str, claims: &Value) {
    assert!(x.ok, "curl failed: {x:#?}");
    assert_eq!(x.version, version, "negotiated HTTP version: {x:#?}");
    assert_eq!(x.code, "200", "status: {x:#?}");
    let seen = Seen::from_json(&x.json());
    let sub = claims["sub"].as_str().unwrap();
    let email = common::email_of(claims);
    common::assert_identity(&seen, Some((sub, Some(email.as_str()))));
    assert!(
        seen.all("authorization").is_empty(),
        "the credential must not reach the upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[test]
fn http2_is_negotiated_and_a_valid_token_reaches_the_upstream_as_identity() {
    let cert = Cert::generate();
    let gw = start(&cert);
    let sub = common::new_sub();
    let claims = common::claims(&sub);
    let auth = format!("Authorization: Bearer {}", common::hs256(&claims));
    let x = curl(
        &gw,
        &cert,
        "--http2",
        &format!("/api/{sub}/tasks/1"),
        &[&auth, "X-User-Id: spoofed"],
    );
    assert_proxied_with_identity(&x, "2", &claims);
}

#[test]
fn http2_without_a_token_is_a_401_problem() {
    let cert = Cert::generate();
    let gw = start(&cert);
    let sub = common::new_sub();
    let x = curl(&gw, &cert, "--http2", &format!("/api/{sub}/tasks/1"), &[]);
    assert!(x.ok, "curl failed: {x:#?}");
    assert_eq!(x.version, "2");
    assert_eq!(x.code, "401", "{x:#?}");
    let ct = x.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/problem+json"),
        "content-type: {ct:?}"
    );
    let v = x.json();
    assert_eq!(v["code"], "missing_token", "{v}");
    assert_eq!(v["status"], 401, "{v}");
    let challenge = x.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"realm="portcullis""#),
        "challenge: {challenge:?}"
    );
    gw.up().assert_not_called();
}

#[test]
fn http1_1_over_tls_works_too() {
    let cert = Cert::generate();
    let gw = start(&cert);
    let sub = common::new_sub();
    let claims = common::claims(&sub);
    let auth = format!("Authorization: Bearer {}", common::hs256(&claims));
    let x = curl(
        &gw,
        &cert,
        "--http1.1",
        &format!("/api/{sub}/tasks/1"),
        &[&auth],
    );
    assert_proxied_with_identity(&x, "1.1", &claims);

    let other = common::new_sub();
    let x = curl(
        &gw,
        &cert,
        "--http1.1",
        &format!("/api/{other}/tasks/1"),
        &[&auth],
    );
    assert_eq!(x.code, "403", "another user's path: {x:#?}");
    assert_eq!(x.json()["code"], "forbidden");

    let x = curl(&gw, &cert, "--http1.1", "/public/hello", &[]);
    assert_eq!(x.code, "200", "{x:#?}");
    assert_eq!(Seen::from_json(&x.json()).path, "/public/hello");
}

#[test]
fn the_certificate_is_really_checked_by_the_client() {
    // Sanity for the tests above: curl verifies the chain and the name, so the 200s there were
    // over a TLS session with this certificate. Asking for another name fails verification.
    let cert = Cert::generate();
    let gw = start(&cert);
    let port = gw.addr.port();
    let x = curl_url(
        &format!("https://127.0.0.1:{port}/public/x"),
        port,
        &cert,
        "--http2",
        &[],
    );
    assert!(x.ok, "the IP SAN must verify too: {x:#?}");
    assert_eq!(x.code, "200");
    let wrong = Cert::generate();
    let x = curl(&gw, &wrong, "--http2", "/public/x", &[]);
    assert!(
        !x.ok && x.code == "000",
        "a certificate from another CA must not verify: {x:#?}"
    );
}

#[test]
fn plain_http_to_the_tls_port_gets_no_http_response() {
    let cert = Cert::generate();
    let gw = start(&cert);
    let port = gw.addr.port();
    let x = curl_url(
        &format!("http://localhost:{port}/public/x"),
        port,
        &cert,
        "--http1.1",
        &[],
    );
    assert!(
        !x.ok && x.code == "000" && !x.stderr.is_empty(),
        "plain HTTP on the TLS listener must not be answered: {x:#?}"
    );
    gw.up().assert_not_called();
    // ...and the listener still serves TLS afterwards.
    let x = curl(&gw, &cert, "--http2", "/public/x", &[]);
    assert_eq!(x.code, "200", "{x:#?}");
}

/// `check-config` on `config()` with these TLS files; returns (passed, stderr).
fn check_config(cert: &Cert, key: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = cert.vars(key);
    vars.extend([
        ("LISTEN", "127.0.0.1:8443".to_string()),
        ("ADMIN", "127.0.0.1:9443".to_string()),
        ("DIR", dir.path().to_string_lossy().into_owned()),
        ("UPSTREAM", "127.0.0.1:3000".to_string()),
    ]);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, common::render(&config(), &vars)).unwrap();
    let (status, _, stderr) = common::run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        &[(common::SECRET_ENV, common::SECRET)],
        dir.path(),
        Duration::from_secs(30),
    );
    (status.success(), stderr)
}

#[test]
fn check_config_accepts_the_generated_pair_and_refuses_bad_key_files() {
    let cert = Cert::generate();
    let (ok, stderr) = check_config(&cert, &cert.key());
    assert!(ok, "a good certificate and PKCS#8 key must pass:\n{stderr}");

    let missing = cert.dir.path().join("missing.pem");
    let garbage = cert.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a key\n").unwrap();
    let truncated = cert.dir.path().join("truncated.pem");
    std::fs::write(
        &truncated,
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    // Another certificate's key: a valid PKCS#8 key that does not belong to this certificate.
    let other = Cert::generate();
    for (what, key) in [
        ("a missing key file", missing),
        ("a key file that is not PEM", garbage),
        ("a truncated PKCS#8 key", truncated),
        ("a certificate given as the key", cert.cert()),
        ("the key of another certificate", other.key()),
    ] {
        let (ok, stderr) = check_config(&cert, &key);
        assert!(!ok, "check-config must refuse {what}");
        assert!(
            stderr.contains("server.tls.key_file"),
            "the refusal for {what} names server.tls.key_file:\n{stderr}"
        );
    }
}

#[test]
fn serve_refuses_to_start_with_a_bad_key_instead_of_running_without_its_listener() {
    // Readiness must never report a gateway whose public listener could not be built.
    let cert = Cert::generate();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "this is not a key\n").unwrap();
    let mut vars = cert.vars(&bad);
    vars.extend([
        ("LISTEN", format!("127.0.0.1:{}", common::free_port())),
        ("ADMIN", format!("127.0.0.1:{}", common::free_port())),
        ("DIR", dir.path().to_string_lossy().into_owned()),
        ("UPSTREAM", common::dead_addr().to_string()),
    ]);
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, common::render(&config(), &vars)).unwrap();
    let (status, _, stderr) = common::run_bin(
        &["serve", "--config", path.to_str().unwrap()],
        &[(common::SECRET_ENV, common::SECRET)],
        dir.path(),
        Duration::from_secs(10),
    );
    assert!(!status.success(), "serve must exit non-zero:\n{stderr}");
    assert!(
        stderr.contains("server.tls.key_file"),
        "the refusal names server.tls.key_file:\n{stderr}"
    );
}
