//! External issuers (`[[issuer]]`), black-box: the real `portcullis serve` fetching a JWKS
//! from a real HTTP server started here, whose answers each test controls and which counts
//! the fetches. Tokens are minted with `jsonwebtoken` and the fixture keys, as Better Auth's
//! JWT plugin would mint them (EdDSA, `kid`, `iss`, `aud`, `sub`, `email`, `exp`, `iat`).

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::tls::openssl;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const BA_ISS: &str = "https://app.example.test";
const BA_AUD: &str = "https://app.example.test";
const PARTNER_ISS: &str = "https://partner.example.test";

// ---------------------------------------------------------------------------------------------
// the JWKS server
// ---------------------------------------------------------------------------------------------

/// What the JWKS server answers.
#[derive(Debug, Clone)]
enum Answer {
    /// 200 with this body and, when given, this Cache-Control.
    Ok(String, Option<&'static str>),
    /// This status, empty body.
    Status(u16),
    /// A redirect to another (working) URL.
    Redirect(String),
    /// Accept, read, never answer.
    Hang,
    /// 200 with this body in chunks of 100 bytes (`Transfer-Encoding: chunked`).
    Chunked(String),
    /// 200 with this body, no length: it ends when the connection closes.
    UntilClose(String),
}

/// A JWKS endpoint on 127.0.0.1 whose answer the test sets, counting the requests it gets.
struct JwksServer {
    port: u16,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
    accept_loop: Option<thread::JoinHandle<()>>,
}

impl JwksServer {
    fn start(answer: Answer) -> Self {
        Self::start_on(0, answer) // port 0: no race with other tests for a free port
    }

    fn start_on(port: u16, answer: Answer) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the JWKS server");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let (a, f, u) = (Arc::clone(&answer), Arc::clone(&fetches), Arc::clone(&up));
        let accept_loop = thread::spawn(move || {
            while u.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (a, f) = (Arc::clone(&a), Arc::clone(&f));
                        thread::spawn(move || serve_jwks(stream, &a, &f));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener is dropped here: the port refuses connections from now on.
        });
        Self {
            port,
            answer,
            fetches,
            up,
            accept_loop: Some(accept_loop),
        }
    }

    /// The same endpoint over TLS, with `cert_chain` / `key` (PEM files).
    fn start_tls(answer: Answer, cert_chain: &std::path::Path, key: &std::path::Path) -> Self {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert_chain)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the JWKS server");
        listener.set_nonblocking(true).unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(AtomicBool::new(true));
        let (a, f, u) = (Arc::clone(&answer), Arc::clone(&fetches), Arc::clone(&up));
        let accept_loop = thread::spawn(move || {
            while u.load(Ordering::SeqCst) {
                let Ok((tcp, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let (a, f, config) = (Arc::clone(&a), Arc::clone(&f), Arc::clone(&config));
                thread::spawn(move || {
                    let _ = tcp.set_nonblocking(false);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    // The handshake happens on first use; a client refusing our certificate
                    // ends it here, before any request is read (and counted).
                    answer_one(&mut tls, &a, &f);
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Self {
            port,
            answer,
            fetches,
            up,
            accept_loop: Some(accept_loop),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/auth/jwks", self.port)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused from now on.
    fn stop(&mut self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.accept_loop.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_jwks(stream: TcpStream, answer: &Mutex<Answer>, fetches: &AtomicUsize) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    answer_one(stream, answer, fetches);
}

/// Reads one request head, counts it, writes the answer.
fn answer_one(mut stream: impl Read + Write, answer: &Mutex<Answer>, fetches: &AtomicUsize) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    fetches.fetch_add(1, Ordering::SeqCst);
    let answer = answer.lock().unwrap().clone();
    let response = match answer {
        Answer::Ok(body, cache) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}connection: close\r\n\r\n{body}",
            body.len(),
            cache
                .map(|c| format!("cache-control: {c}\r\n"))
                .unwrap_or_default()
        ),
        Answer::Status(code) => {
            format!("HTTP/1.1 {code} Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        }
        Answer::Redirect(to) => format!(
            "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
        Answer::Hang => {
            thread::sleep(Duration::from_secs(20));
            return;
        }
        Answer::Chunked(body) => {
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for chunk in body.as_bytes().chunks(100) {
                let chunk = std::str::from_utf8(chunk).unwrap();
                let _ = write!(out, "{:x}\r\n{chunk}\r\n", chunk.len());
            }
            out.push_str("0\r\n\r\n");
            out
        }
        Answer::UntilClose(body) => {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{body}"
            )
        }
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------------------------
// keys and tokens
// ---------------------------------------------------------------------------------------------

/// The public JWK of an Ed25519 fixture key, as Better Auth publishes it.
fn ed_jwk(pub_pem: &str, kid: &str) -> Value {
    json!({"kty":"OKP","crv":"Ed25519","x": b64url(&ed25519_raw_public(pub_pem)),
           "kid": kid, "alg": "EdDSA", "use": "sig"})
}

/// The current key (`ed25519.pem`) as `ba-1`, the other fixture key as `ba-2`.
fn k1() -> Value {
    ed_jwk("ed25519.pub.pem", "ba-1")
}
fn k2() -> Value {
    ed_jwk("ed25519-old.pub.pem", "ba-2")
}

fn jwks(keys: &[Value]) -> Answer {
    Answer::Ok(json!({ "keys": keys }).to_string(), None)
}

/// Better Auth's claims for user `sub`.
fn ba_claims(sub: &str) -> Value {
    let iat = now();
    json!({"sub": sub, "email": format!("{sub}@app.example.test"), "iat": iat, "exp": iat + 600,
           "iss": BA_ISS, "aud": BA_AUD})
}

fn with(mut claims: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    f(claims.as_object_mut().unwrap());
    claims
}

fn ed_token(pem: &str, kid: &str, claims: &Value) -> String {
    sign_pem(Algorithm::EdDSA, pem, Some(kid), claims)
}

/// A token of `sub` signed by `ba-1`.
fn ba_token(sub: &str) -> String {
    ed_token("ed25519.pem", "ba-1", &ba_claims(sub))
}

// ---------------------------------------------------------------------------------------------
// the gateway
// ---------------------------------------------------------------------------------------------

/// A gateway trusting the Better Auth issuer at `{JWKS}`, refreshing every `{REFRESH}` s and
/// at most every `{MIN_REFRESH}` s, with an owner, a required and an optional route.
fn config() -> String {
    TestConfig::new()
        .cookie("secure = false")
        .app(&[])
        .route(
            "/api/{user_id}/{*rest}",
            "app",
            "required",
            &["owner = \"user_id\""],
        )
        .route("/req/{*rest}", "app", "required", &[])
        .route("/feed/{*rest}", "app", "optional", &[])
        .section(
            r#"[[issuer]]
name = "better-auth"
jwks_url = "{JWKS}"
issuer = "https://app.example.test"
audience = "https://app.example.test"
refresh_secs = {REFRESH}
min_refresh_secs = {MIN_REFRESH}
timeout_ms = 400
"#,
        )
        .build()
}

/// A gateway trusting the Better Auth issuer at `jwks_url`.
fn gateway(jwks_url: &str, refresh: u64, min_refresh: u64) -> Gateway {
    gateway_with(jwks_url, refresh, min_refresh, "")
}

fn gateway_with(jwks_url: &str, refresh: u64, min_refresh: u64, extra: &str) -> Gateway {
    Gateway::start_with(
        &format!("{}\n{extra}", config()),
        &[],
        &[
            ("JWKS", jwks_url.to_owned()),
            ("REFRESH", refresh.to_string()),
            ("MIN_REFRESH", min_refresh.to_string()),
        ],
    )
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    gw.get(path, &[("Authorization", &format!("Bearer {token}"))])
}

fn readyz(gw: &Gateway) -> Response {
    get(gw.admin, "/readyz", &[])
}

fn metrics(gw: &Gateway) -> String {
    get(gw.admin, "/metrics", &[]).text()
}

/// The value of the first metric line starting with `prefix` (name and labels).
fn metric(gw: &Gateway, prefix: &str) -> Option<f64> {
    metrics(gw)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `portcullis_jwks_kid_waits_total` of the issuer for `result`.
fn kid_waits(gw: &Gateway, result: &str) -> u64 {
    let name =
        format!(r#"portcullis_jwks_kid_waits_total{{issuer="better-auth",result="{result}"}}"#);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    metric(gw, &name).map_or(0, |v| v as u64)
}

#[track_caller]
fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the issuer's first fetch succeeded (`/readyz` 200).
#[track_caller]
fn wait_ready(gw: &Gateway) {
    gw.wait_ready(Duration::from_secs(10), "timed out waiting for /readyz 200");
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[test]
fn an_external_eddsa_token_is_accepted_with_identity_from_the_configured_claims() {
    let ba = JwksServer::start(jwks(&[k1()]));
    // A second issuer whose identity lives in non-default claims (`uid`, `mail`).
    let partner = JwksServer::start(jwks(&[ed_jwk("ed25519-old.pub.pem", "p-1")]));
    let gw = gateway_with(
        &ba.url(),
        3600,
        1,
        &format!(
            r#"
[[issuer]]
name = "partner"
jwks_url = "{}"
issuer = "{PARTNER_ISS}"
audience = "portcullis-edge"
user_id_claim = "uid"
email_claim = "mail"
"#,
            partner.url()
        ),
    );
    wait_ready(&gw);

    let token = ba_token("ba_user_42");
    let r = gw.get(
        "/req/x",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-User-Id", "spoofed"),
            ("Cookie", "pc_tok=other; theme=dark"),
        ],
    );
    let seen = r.seen();
    assert_identity(
        &seen,
        Some(("ba_user_42", Some("ba_user_42@app.example.test"))),
    );
    assert!(
        seen.all("authorization").is_empty(),
        "the credential must not reach the upstream"
    );

    // The same token in the auth cookie works too, and the cookie is taken away.
    let r = gw.get(
        "/req/x",
        &[("Cookie", &format!("pc_tok={token}; theme=dark"))],
    );
    let seen = r.seen();
    assert_identity(
        &seen,
        Some(("ba_user_42", Some("ba_user_42@app.example.test"))),
    );
    assert_eq!(seen.cookies(), [("theme".to_owned(), "dark".to_owned())]);

    // Non-default claim names: `uid` becomes X-User-Id, `mail` X-User-Email; `sub` is ignored.
    let claims = json!({"uid": "p-777", "mail": "p@partner.example.test", "sub": "not-this",
        "iat": now(), "exp": now() + 600, "iss": PARTNER_ISS, "aud": "portcullis-edge"});
    let t = ed_token("ed25519-old.pem", "p-1", &claims);
    assert_identity(
        &bearer(&gw, "/req/x", &t).seen(),
        Some(("p-777", Some("p@partner.example.test"))),
    );
    // Without the mapped user id claim the token is refused, even with a `sub`.
    let t = ed_token(
        "ed25519-old.pem",
        "p-1",
        &with(claims.clone(), |c| {
            c.remove("uid");
        }),
    );
    assert_401(&bearer(&gw, "/req/x", &t), "invalid_token", true);
    // A mapped claim that would smuggle a header is refused like a bad `sub`.
    let t = ed_token(
        "ed25519-old.pem",
        "p-1",
        &with(claims, |c| {
            c.insert("uid".into(), json!("a\r\nX-User-Role: admin"));
        }),
    );
    assert_401(&bearer(&gw, "/req/x", &t), "invalid_token", true);

    // Each issuer's keys are its own: partner's key does not verify a Better Auth token.
    let t = ed_token("ed25519-old.pem", "p-1", &ba_claims("ba_user_42"));
    assert_401(&bearer(&gw, "/req/x", &t), "invalid_token", true);
    // Our own HS256 tokens keep working beside them.
    let sub = new_sub();
    assert_identity(
        &bearer(&gw, "/req/x", &token_for(&sub)).seen(),
        Some((&sub, Some(&email_of(&common::claims(&sub))))),
    );
}

#[test]
fn claim_rules_hold_external_tokens_to_the_same_claims_and_scopes() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway_with(
        &ba.url(),
        3600,
        1,
        r#"
[[route]]
path = "/admin/{*rest}"
upstream = "app"
auth = "required"
require = { role = "admin" }
require_scopes = ["tasks:write"]
"#,
    );
    wait_ready(&gw);
    let token = |f: fn(&mut serde_json::Map<String, Value>)| {
        ed_token("ed25519.pem", "ba-1", &with(ba_claims("ba_user_7"), f))
    };
    let admin = token(|c| {
        c.insert("role".into(), json!("admin"));
        c.insert("scope".into(), json!("openid tasks:write"));
    });
    let r = bearer(&gw, "/admin/x", &admin);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(
        &r.seen(),
        Some(("ba_user_7", Some("ba_user_7@app.example.test"))),
    );
    for refused in [
        token(|_| {}),
        token(|c| {
            c.insert("role".into(), json!("admin"));
        }),
        token(|c| {
            c.insert("role".into(), json!("user"));
            c.insert("scp".into(), json!(["tasks:write"]));
        }),
    ] {
        let r = bearer(&gw, "/admin/x", &refused);
        assert_problem(&r, 403, "insufficient_scope");
        assert_eq!(
            r.headers_all("www-authenticate"),
            [r#"Bearer realm="portcullis", error="insufficient_scope""#]
        );
    }
    // An expired external token is 401 before any rule.
    let expired = token(|c| {
        c.insert("role".into(), json!("admin"));
        c.insert("scope".into(), json!("tasks:write"));
        c.insert("exp".into(), json!(now() - 3600));
    });
    assert_401(&bearer(&gw, "/admin/x", &expired), "token_expired", true);
    assert_eq!(
        gw.up().proxied_count(),
        1,
        "only the admin token was proxied"
    );
}

#[test]
fn bad_external_tokens_are_401_and_never_proxied() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, 30);
    wait_ready(&gw);
    let sub = "ba_user_1";

    // A Better Auth token with claims changed: `(claim, value)` pairs set over the good ones.
    let changed = |claims: &[(&str, Value)]| {
        let mut c = ba_claims(sub);
        for (name, value) in claims {
            c[*name] = value.clone();
        }
        ed_token("ed25519.pem", "ba-1", &c)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown issuer",
            changed(&[("iss", json!("https://evil.example.test"))]),
            "invalid_token",
        ),
        (
            "our issuer, signed with the external key",
            changed(&[("iss", json!(ISSUER)), ("aud", json!(AUDIENCE))]),
            "invalid_token",
        ),
        (
            "wrong audience",
            changed(&[("aud", json!("https://other.example.test"))]),
            "invalid_token",
        ),
        (
            "expired beyond the leeway",
            changed(&[("exp", json!(now() - 120))]),
            "token_expired",
        ),
        (
            "signed by a key the issuer does not publish",
            ed_token("ed25519-old.pem", "ba-1", &ba_claims(sub)),
            "invalid_token",
        ),
        (
            "unknown kid",
            ed_token("ed25519.pem", "ba-9", &ba_claims(sub)),
            "invalid_token",
        ),
        (
            "HS256 with the external kid, keyed with our secret",
            hs256_with(SECRET.as_bytes(), &ba_claims(sub), Some("ba-1")),
            "invalid_token",
        ),
        (
            "HS256 with the external kid, keyed with the public key bytes",
            hs256_with(
                &ed25519_raw_public("ed25519.pub.pem"),
                &ba_claims(sub),
                Some("ba-1"),
            ),
            "invalid_token",
        ),
        (
            "HS256 without kid",
            hs256_with(SECRET.as_bytes(), &ba_claims(sub), None),
            "invalid_token",
        ),
        ("alg none", alg_none(&ba_claims(sub)), "invalid_token"),
        (
            "tampered payload",
            swap_payload(
                &ba_token(sub),
                &with(ba_claims(sub), |c| {
                    c.insert("sub".into(), json!("someone_else"));
                }),
            ),
            "invalid_token",
        ),
    ];
    for (what, token, code) in &cases {
        let r = bearer(&gw, "/req/x", token);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_401(&r, code, true);
        assert_no_token_echo(&r, token);
    }
    gw.up().assert_not_called();
    // The good token still passes: the refusals above were about the tokens.
    assert_eq!(bearer(&gw, "/req/x", &ba_token(sub)).status, 200);
}

/// A JWK of the current fixture key under another `kid`, as an issuer's freshly made key.
fn rotated(kid: &str) -> Value {
    ed_jwk("ed25519.pub.pem", kid)
}

/// The waits of first-sight requests: their median, and the longest.
fn median(mut waits: Vec<Duration>) -> Duration {
    waits.sort();
    waits[waits.len() / 2]
}

#[test]
fn a_key_rotated_right_after_start_or_in_steady_state_is_trusted_on_its_first_request() {
    const ROTATIONS: usize = 5;
    // min_refresh_secs = 30: before, a new kid waited up to 30 s after any fetch.
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, 30);
    wait_ready(&gw);
    let old = ba_token("u1");

    // Right after start: the issuer rotates the moment its first set has been fetched, and the
    // first token of the new key is the client's first request.
    ba.set(jwks(&[k2(), k1()]));
    let before = ba.fetches();
    let new = ed_token("ed25519-old.pem", "ba-2", &ba_claims("u1"));
    let sent = Instant::now();
    let r = bearer(&gw, "/req/x", &new);
    let first_wait = sent.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&r.seen(), Some(("u1", Some("u1@app.example.test"))));
    assert_eq!(ba.fetches() - before, 1, "one refetch for the new kid");
    assert_eq!(
        bearer(&gw, "/req/x", &old).status,
        200,
        "ba-1 is still published"
    );

    // Steady state: each later rotation's first request passes too, one refetch each.
    let mut waits = vec![first_wait];
    let mut published = vec![k2(), k1()];
    for i in 0..ROTATIONS {
        thread::sleep(Duration::from_millis(1100)); // unknown-kid refetches: at most 1/s
        let kid = format!("rot-{i}");
        published.insert(0, rotated(&kid));
        ba.set(jwks(&published));
        let before = ba.fetches();
        let token = ed_token("ed25519.pem", &kid, &ba_claims("u1"));
        let sent = Instant::now();
        let r = bearer(&gw, "/req/x", &token);
        waits.push(sent.elapsed());
        assert_eq!(r.status, 200, "rotation {i}: {}", r.text());
        assert_eq!(ba.fetches() - before, 1, "rotation {i}: one refetch");
        assert_eq!(bearer(&gw, "/req/x", &token).status, 200);
    }
    let longest = *waits.iter().max().unwrap();
    let median = median(waits);
    eprintln!(
        "first-sight requests: median {median:?}, longest {longest:?} over {} rotations",
        ROTATIONS + 1
    );
    assert!(
        longest < Duration::from_millis(400),
        "within timeout_ms: {longest:?}"
    );
    assert_eq!(
        kid_waits(&gw, "found"),
        u64::try_from(ROTATIONS + 1).unwrap()
    );
    assert_eq!(gw.up().proxied_count(), 2 * ROTATIONS + 2);

    // With several keys published a token must name its key: none is tried blindly.
    let no_kid = sign_pem(Algorithm::EdDSA, "ed25519.pem", None, &ba_claims("u1"));
    assert_401(&bearer(&gw, "/req/x", &no_kid), "invalid_token", true);

    // ba-1 retired: it stops being trusted once the set is fetched again (here for a probe).
    ba.set(jwks(&[k2()]));
    let probe = ed_token("ed25519.pem", "ba-probe", &ba_claims("u1"));
    wait_for(
        "the retired kid to be refused",
        Duration::from_secs(5),
        || {
            assert_401(&bearer(&gw, "/req/x", &probe), "invalid_token", true);
            bearer(&gw, "/req/x", &old).status == 401
        },
    );
    assert_eq!(bearer(&gw, "/req/x", &new).status, 200);
    // One key published again: a token without kid is checked against it.
    let no_kid = sign_pem(Algorithm::EdDSA, "ed25519-old.pem", None, &ba_claims("u1"));
    assert_eq!(bearer(&gw, "/req/x", &no_kid).status, 200);
}

/// A forward-auth ask (nginx `auth_request`, Traefik, Envoy) is admitted like a proxied
/// request: a kid rotated in waits for the one refetch, then is allowed with its identity.
#[test]
fn a_forward_auth_ask_with_a_rotated_kid_waits_for_the_refetch_and_is_allowed() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway_with(
        &ba.url(),
        3600,
        30,
        "[forward_auth]\nenabled = true\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    wait_ready(&gw);
    ba.set(jwks(&[rotated("fa-2"), k1()]));
    let before = ba.fetches();
    let token = ed_token("ed25519.pem", "fa-2", &ba_claims("u1"));
    let sent = Instant::now();
    let r = gw.get(
        "/_portcullis/auth/traefik",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "app.example.test"),
            ("X-Forwarded-Uri", "/req/x"),
            ("Authorization", &format!("Bearer {token}")),
        ],
    );
    let waited = sent.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-user-id"), Some("u1"));
    assert_eq!(ba.fetches() - before, 1, "one refetch for the new kid");
    assert_eq!(kid_waits(&gw, "found"), 1);
    assert!(
        waited < Duration::from_millis(400),
        "within timeout_ms: {waited:?}"
    );
    gw.up().assert_not_called();
}

#[test]
fn with_the_jwks_down_or_hung_a_new_kid_waits_at_most_timeout_ms_then_401() {
    let mut ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, 30);
    wait_ready(&gw);
    let known = ba_token("u1");
    let unknown = |i: usize| ed_token("ed25519.pem", &format!("new-{i}"), &ba_claims("u1"));

    // Hung: the endpoint accepts and never answers. timeout_ms = 400 ends the wait.
    ba.set(Answer::Hang);
    thread::sleep(Duration::from_millis(1100));
    let sent = Instant::now();
    let r = bearer(&gw, "/req/x", &unknown(1));
    let waited = sent.elapsed();
    assert_401(&r, "invalid_token", true);
    eprintln!("JWKS hung: a new kid answered 401 after {waited:?}");
    assert!(
        (Duration::from_millis(350)..Duration::from_millis(1500)).contains(&waited),
        "waited for the refetch, at most timeout_ms (400 ms): {waited:?}"
    );
    // Meanwhile a known key never waits.
    let sent = Instant::now();
    assert_eq!(bearer(&gw, "/req/x", &known).status, 200);
    assert!(sent.elapsed() < Duration::from_millis(300));

    // Down: connections refused. The refetch fails at once, and so does the wait.
    ba.stop();
    thread::sleep(Duration::from_millis(1100));
    let sent = Instant::now();
    assert_401(&bearer(&gw, "/req/x", &unknown(2)), "invalid_token", true);
    let waited = sent.elapsed();
    eprintln!("JWKS down: a new kid answered 401 after {waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert_eq!(
        bearer(&gw, "/req/x", &known).status,
        200,
        "the last good keys stay"
    );
    let ended = ["timeout", "unknown", "refused"].map(|r| kid_waits(&gw, r));
    assert_eq!(ended.iter().sum::<u64>(), 2, "{ended:?}");
    assert_eq!(kid_waits(&gw, "found"), 0);
    assert_eq!(gw.up().proxied_count(), 2, "the known-key requests only");
}

#[test]
fn a_jwks_outage_keeps_the_last_good_keys_and_the_gateway_ready() {
    // refresh_secs = 1: the set is fetched about every 0.9 s, so each outage mode is met.
    let mut ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 1, 1);
    wait_ready(&gw);
    let token = ba_token("u1");
    assert_eq!(bearer(&gw, "/req/x", &token).status, 200);

    let still_serving = |what: &str| {
        assert_eq!(
            bearer(&gw, "/req/x", &token).status,
            200,
            "{what}: the last good keys must still verify"
        );
        let r = readyz(&gw);
        assert_eq!(
            r.status,
            200,
            "{what}: stays ready on stale keys: {}",
            r.text()
        );
    };

    ba.set(Answer::Status(500));
    wait_for("a failed fetch (500)", Duration::from_secs(10), || {
        metric(
            &gw,
            r#"portcullis_jwks_fetches_total{issuer="better-auth",result="status"}"#,
        )
        .is_some_and(|v| v >= 1.0)
    });
    still_serving("500");

    // Hanging: the 400 ms timeout ends each attempt.
    ba.set(Answer::Hang);
    wait_for("a timed-out fetch", Duration::from_secs(10), || {
        metric(
            &gw,
            r#"portcullis_jwks_fetches_total{issuer="better-auth",result="timeout"}"#,
        )
        .is_some_and(|v| v >= 1.0)
    });
    still_serving("hang");

    // Gone: connections refused.
    ba.stop();
    wait_for("a refused connection", Duration::from_secs(10), || {
        metric(
            &gw,
            r#"portcullis_jwks_fetches_total{issuer="better-auth",result="connect"}"#,
        )
        .is_some_and(|v| v >= 1.0)
    });
    still_serving("gone");

    let ready = readyz(&gw).json();
    let state = &ready["issuers"]["better-auth"];
    assert_eq!(state["ready"], true, "{ready}");
    assert_eq!(state["keys"], 1, "{ready}");
    assert!(state["failures_in_a_row"].as_u64().unwrap() >= 3, "{ready}");
    assert!(state["last_error"].is_string(), "{ready}");
    wait_for("the keys to age", Duration::from_secs(5), || {
        metric(&gw, r#"portcullis_jwks_age_seconds{issuer="better-auth"}"#)
            .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        metric(&gw, r#"portcullis_jwks_keys{issuer="better-auth"}"#),
        Some(1.0)
    );
    assert!(
        metric(
            &gw,
            r#"portcullis_jwks_fetches_total{issuer="better-auth",result="ok"}"#
        )
        .is_some_and(|v| v >= 1.0)
    );
}

#[test]
fn cache_control_max_age_paces_the_refresh_within_min_refresh_and_refresh() {
    let body = json!({ "keys": [k1()] }).to_string();
    let ba = JwksServer::start(Answer::Ok(body.clone(), Some("public, max-age=2")));
    let gw = gateway(&ba.url(), 3600, 1);
    wait_ready(&gw);
    // max-age=2: refetched at 9/10 of it, although refresh_secs is an hour.
    let before = ba.fetches();
    thread::sleep(Duration::from_millis(4500));
    let paced = ba.fetches() - before;
    assert!(
        (2..=4).contains(&paced),
        "max-age=2 over 4.5 s: expected 2 to 4 refetches, saw {paced}"
    );
    // no-store asks for every request: still at most one fetch per min_refresh_secs (1 s).
    ba.set(Answer::Ok(body, Some("no-store")));
    thread::sleep(Duration::from_secs(2));
    let before = ba.fetches();
    thread::sleep(Duration::from_secs(3));
    let eager = ba.fetches() - before;
    assert!(
        (1..=4).contains(&eager),
        "no-store over 3 s with min_refresh_secs = 1: saw {eager} fetches"
    );
}

#[test]
fn jwks_answers_in_chunks_or_ended_by_close_are_read() {
    let ba = JwksServer::start(Answer::Chunked(json!({ "keys": [k1()] }).to_string()));
    let gw = gateway(&ba.url(), 3600, 1);
    wait_ready(&gw);
    assert_eq!(bearer(&gw, "/req/x", &ba_token("u1")).status, 200);

    // The next set arrives without a length; an unknown kid fetches it.
    ba.set(Answer::UntilClose(
        json!({ "keys": [k1(), k2()] }).to_string(),
    ));
    let new = ed_token("ed25519-old.pem", "ba-2", &ba_claims("u1"));
    wait_for("the set read to the close", Duration::from_secs(5), || {
        bearer(&gw, "/req/x", &new).status == 200
    });
}

#[test]
fn starting_with_the_jwks_down_is_not_ready_until_the_first_fetch_succeeds() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/api/auth/jwks");
    let gw = gateway(&url, 3600, 1);
    let token = ba_token("u1");

    thread::sleep(Duration::from_millis(700));
    let r = readyz(&gw);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["issuers"]["better-auth"]["ready"], false, "{v}");
    assert_eq!(v["issuers"]["better-auth"]["keys"], 0, "{v}");
    // The edge serves meanwhile: our tokens pass, the issuer's are refused (no keys yet).
    let sub = new_sub();
    assert_eq!(bearer(&gw, "/req/x", &token_for(&sub)).status, 200);
    assert_401(&bearer(&gw, "/req/x", &token), "invalid_token", true);

    let ba = JwksServer::start_on(port, jwks(&[k1()]));
    wait_ready(&gw);
    assert!(ba.fetches() >= 1);
    assert_eq!(readyz(&gw).json()["issuers"]["better-auth"]["keys"], 1);
    assert_eq!(bearer(&gw, "/req/x", &token).status, 200);
}

/// A client of a known key, every 20 ms while `on`: how long each request took.
fn known_key_client(addr: std::net::SocketAddr, token: &str, on: &AtomicBool) -> Vec<Duration> {
    let mut took = Vec::new();
    while on.load(Ordering::SeqCst) {
        let sent = Instant::now();
        let r = get(
            addr,
            "/req/x",
            &[("Authorization", &format!("Bearer {token}"))],
        );
        took.push(sent.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
        thread::sleep(Duration::from_millis(20));
    }
    took
}

#[test]
fn a_spray_of_unknown_kids_causes_a_bounded_number_of_fetches_and_known_keys_never_wait() {
    const MIN_REFRESH: u64 = 2;
    const TOKENS: usize = 1000;
    const SPRAYERS: usize = 100;
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, MIN_REFRESH);
    wait_ready(&gw);
    let at_start = ba.fetches();
    assert_eq!(at_start, 1);

    let claims = ba_claims("u1");
    let tokens: Vec<String> = (0..TOKENS)
        .map(|i| ed_token("ed25519.pem", &format!("spray-{i}-{}", new_sub()), &claims))
        .collect();
    let good = ba_token("u1");
    let spraying = AtomicBool::new(true);
    let started = Instant::now();
    let slowest_refusal = Mutex::new(Duration::ZERO);
    let addr = gw.addr;
    let known: Vec<Duration> = thread::scope(|s| {
        let sprayers: Vec<_> = tokens
            .chunks(TOKENS / SPRAYERS)
            .map(|part| {
                let slowest = &slowest_refusal;
                s.spawn(move || {
                    for t in part {
                        let sent = Instant::now();
                        let r = get(addr, "/req/x", &[("Authorization", &format!("Bearer {t}"))]);
                        let took = sent.elapsed();
                        assert_eq!(r.status, 401, "{}", r.text());
                        let mut m = slowest.lock().unwrap();
                        *m = (*m).max(took);
                        drop(m);
                        // Spread over a few seconds: the budget is per second.
                        thread::sleep(Duration::from_millis(300));
                    }
                })
            })
            .collect();
        let client = s.spawn(|| known_key_client(addr, &good, &spraying));
        for t in sprayers {
            t.join().unwrap();
        }
        spraying.store(false, Ordering::SeqCst);
        client.join().unwrap()
    });
    let elapsed = started.elapsed();
    let fetched = ba.fetches() - at_start;
    // At most one unknown-kid refetch per second (10 per min_refresh_secs = 2 s allows more).
    let bound = usize::try_from(elapsed.as_millis().div_ceil(1000)).unwrap() + 1;
    let slowest = *slowest_refusal.lock().unwrap();
    let known_longest = *known.iter().max().unwrap();
    eprintln!(
        "kid spray: {TOKENS} unknown kids from {SPRAYERS} clients in {elapsed:?}, {fetched} JWKS \
         fetches (bound {bound}), slowest refusal {slowest:?}; {} known-key requests meanwhile, \
         median {:?}, longest {known_longest:?}",
        known.len(),
        median(known.clone()),
    );
    assert!(
        (1..=bound).contains(&fetched),
        "{TOKENS} unknown kids in {elapsed:?} caused {fetched} fetches; at most {bound}"
    );
    assert!(
        slowest < Duration::from_millis(1500),
        "a wait ends with its refetch or at timeout_ms: slowest {slowest:?}"
    );
    // Every spray request waited (or was refused a wait) once; the known key's never did.
    let ended = ["found", "unknown", "timeout", "refused"].map(|r| kid_waits(&gw, r));
    assert_eq!(
        ended.iter().sum::<u64>(),
        u64::try_from(TOKENS).unwrap(),
        "{ended:?}"
    );
    assert_eq!(kid_waits(&gw, "found"), 0);
    assert_eq!(
        metric(
            &gw,
            r#"portcullis_jwks_unknown_kid_total{issuer="better-auth"}"#
        ),
        Some(f64::from(u32::try_from(TOKENS).unwrap()))
    );
    assert_eq!(
        gw.up().proxied_count(),
        known.len(),
        "the known-key requests only"
    );
    assert_eq!(bearer(&gw, "/req/x", &ba_token("u1")).status, 200);
}

#[test]
fn oversized_or_malformed_jwks_documents_are_refused_and_the_previous_keys_kept() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 1, 1);
    wait_ready(&gw);
    let token = ba_token("u1");
    let other = JwksServer::start(jwks(&[k2()]));

    // A 1024-bit RSA modulus (top bit set): too weak to be trusted.
    let mut n = vec![0xc5u8; 128];
    n[127] |= 1;
    let weak_rsa = json!({"kty":"RSA","kid":"ba-1","alg":"RS256","use":"sig",
                          "n": b64url(&n), "e":"AQAB"});
    let oct = json!({"kty":"oct","kid":"ba-1","alg":"HS256","k": b64url(SECRET.as_bytes())});
    let huge = json!({"keys":[k2()], "pad": "x".repeat(200 * 1024)}).to_string();
    let cases: Vec<(&str, Answer, &str)> = vec![
        ("a 200 KiB body", Answer::Ok(huge, None), "too_large"),
        (
            "garbage",
            Answer::Ok("<html>oops</html>".into(), None),
            "invalid",
        ),
        ("no keys", jwks(&[]), "invalid"),
        ("only a symmetric key", jwks(&[oct]), "invalid"),
        ("only a 1024-bit RSA key", jwks(&[weak_rsa]), "invalid"),
        ("a redirect", Answer::Redirect(other.url()), "redirect"),
    ];
    for (what, answer, result) in cases {
        let label =
            format!(r#"portcullis_jwks_fetches_total{{issuer="better-auth",result="{result}"}}"#);
        let before = metric(&gw, &label).unwrap_or(0.0);
        ba.set(answer);
        wait_for(what, Duration::from_secs(10), || {
            metric(&gw, &label).is_some_and(|v| v > before)
        });
        assert_eq!(
            bearer(&gw, "/req/x", &token).status,
            200,
            "{what}: the previous keys must stay in force"
        );
        assert_eq!(readyz(&gw).status, 200, "{what}");
    }
    assert_eq!(other.fetches(), 0, "a redirect is never followed");
    // A good document again: taken at once.
    ba.set(jwks(&[k1(), k2()]));
    wait_for("the good document", Duration::from_secs(10), || {
        metric(&gw, r#"portcullis_jwks_keys{issuer="better-auth"}"#) == Some(2.0)
    });
}

#[test]
fn owner_rule_and_optional_route_use_the_external_identity() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, 30);
    wait_ready(&gw);
    let token = ba_token("ba_owner");

    // Owner rule: the path parameter is compared with the mapped user id.
    let r = bearer(&gw, "/api/ba_owner/tasks", &token);
    assert_identity(
        &r.seen(),
        Some(("ba_owner", Some("ba_owner@app.example.test"))),
    );
    assert_problem(
        &bearer(&gw, "/api/someone_else/tasks", &token),
        403,
        "forbidden",
    );

    // Optional route: identity when the external token is good, 401 when it is bad,
    // anonymous without one.
    assert_identity(
        &bearer(&gw, "/feed/x", &token).seen(),
        Some(("ba_owner", Some("ba_owner@app.example.test"))),
    );
    let expired = ed_token(
        "ed25519.pem",
        "ba-1",
        &with(ba_claims("ba_owner"), |c| {
            c.insert("exp".into(), json!(now() - 120));
        }),
    );
    assert_401(&bearer(&gw, "/feed/x", &expired), "token_expired", true);
    assert_identity(&gw.get("/feed/x", &[]).seen(), None);
    // Without an email claim there is no X-User-Email.
    let t = ed_token(
        "ed25519.pem",
        "ba-1",
        &with(ba_claims("ba_owner"), |c| {
            c.remove("email");
        }),
    );
    assert_identity(&bearer(&gw, "/feed/x", &t).seen(), Some(("ba_owner", None)));
}

#[test]
fn signout_and_me_refuse_an_external_token_with_403() {
    let ba = JwksServer::start(jwks(&[k1()]));
    let gw = gateway(&ba.url(), 3600, 30);
    wait_ready(&gw);
    // A UUID user id, as some issuers use: still not one of our users.
    let token = ba_token(&new_sub());
    let auth = format!("Bearer {token}");
    let me = gw.get("/api/v1/auth/me", &[("Authorization", &auth)]);
    assert_problem(&me, 403, "forbidden");
    let out = gw.raw(&request_bytes(
        "POST",
        "/api/v1/auth/signout",
        &[("Authorization", &auth)],
        Some(b""),
    ));
    assert_problem(&out, 403, "forbidden");
    // Nothing was revoked: the token still passes the edge.
    assert_eq!(bearer(&gw, "/req/x", &token).status, 200);
}

// ---------------------------------------------------------------------------------------------
// https
// ---------------------------------------------------------------------------------------------

/// A test CA, a server certificate it signed for `localhost` / 127.0.0.1, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &p(&format!("{ca}.key")),
                "-out",
                &p(&format!("{ca}.pem")),
                "-days",
                "2",
                "-subj",
                &format!("/CN=Portcullis test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("server.pem"),
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn an_https_jwks_is_trusted_only_behind_a_certificate_that_verifies() {
    let pki = Pki::generate();
    let ba = JwksServer::start_tls(
        jwks(&[k1()]),
        &pki.path("server.pem"),
        &pki.path("server.key"),
    );
    let url = format!("https://localhost:{}/api/auth/jwks", ba.port);
    let token = ba_token("u1");
    let start = |ca: &str| {
        let ca = pki.path(ca).to_string_lossy().into_owned();
        Gateway::start_with(
            &config(),
            &[
                ("SSL_CERT_FILE", ca.as_str()),
                ("SSL_CERT_DIR", "/nonexistent"),
            ],
            &[
                ("JWKS", url.clone()),
                ("REFRESH", "3600".into()),
                ("MIN_REFRESH", "1".into()),
            ],
        )
    };

    // Roots that hold the server's CA: fetched over TLS, tokens accepted.
    let trusting = start("ca.pem");
    wait_ready(&trusting);
    assert_identity(
        &bearer(&trusting, "/req/x", &token).seen(),
        Some(("u1", Some("u1@app.example.test"))),
    );
    assert!(ba.fetches() >= 1);

    // Roots that do not: the handshake fails, nothing is fetched, never ready.
    let fetched = ba.fetches();
    let doubting = start("other-ca.pem");
    wait_for("a failed TLS handshake", Duration::from_secs(10), || {
        metric(
            &doubting,
            r#"portcullis_jwks_fetches_total{issuer="better-auth",result="tls"}"#,
        )
        .is_some_and(|v| v >= 2.0)
    });
    assert_eq!(
        ba.fetches(),
        fetched,
        "no request was sent over the untrusted connection"
    );
    let r = readyz(&doubting);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["issuers"]["better-auth"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("tls")),
        "{}",
        r.text()
    );
    assert_401(&bearer(&doubting, "/req/x", &token), "invalid_token", true);
}

/// An issuer's RSA key, published for RSA-PSS (`alg: PS256`), from the fixture.
fn ps256_jwk(kid: &str) -> Value {
    let key = portcullis::authn::VerifyKey::from_private_pem(
        Some(kid.into()),
        portcullis::authn::Alg::RS256,
        &read_key("rsa.pem"),
    )
    .unwrap();
    let set = portcullis::authn::KeySet::new(vec![key], "i".into(), "a".into(), 0);
    let doc: Value = serde_json::from_slice(set.jwks().unwrap()).unwrap();
    let mut jwk = doc["keys"][0].clone();
    jwk["alg"] = "PS256".into();
    jwk
}

#[test]
fn a_jwks_of_ps256_keys_only_makes_the_gateway_ready_and_trusts_their_tokens_alone() {
    // Better Auth offers RSA-PSS; a set of such keys alone used to leave /readyz at 503.
    let ba = JwksServer::start(jwks(&[ps256_jwk("ba-ps")]));
    let gw = gateway(&ba.url(), 3600, 1);
    wait_ready(&gw);
    let sign = |alg| sign_pem(alg, "rsa.pem", Some("ba-ps"), &ba_claims("ba_user_ps"));
    let r = bearer(&gw, "/req/x", &sign(Algorithm::PS256));
    assert_identity(
        &r.seen(),
        Some(("ba_user_ps", Some("ba_user_ps@app.example.test"))),
    );
    // The same key under PKCS#1 v1.5: not what it is published for.
    assert_401(
        &bearer(&gw, "/req/x", &sign(Algorithm::RS256)),
        "invalid_token",
        true,
    );
}

#[test]
fn unsupported_keys_beside_usable_ones_are_skipped_counted_and_logged() {
    let secp256k1 = json!({"kty":"EC","crv":"secp256k1","x":"AA","y":"AA","kid":"k1"});
    let mut ps384 = ps256_jwk("ba-ps384");
    ps384["alg"] = "PS384".into();
    let ba = JwksServer::start(jwks(&[secp256k1, ps256_jwk("ba-ps"), ps384]));
    let gw = gateway(&ba.url(), 3600, 1);
    wait_ready(&gw);
    assert_eq!(
        metric(&gw, "portcullis_jwks_keys_skipped{issuer=\"better-auth\"}"),
        Some(2.0)
    );
    let token = sign_pem(Algorithm::PS256, "rsa.pem", Some("ba-ps"), &ba_claims("u7"));
    assert_eq!(bearer(&gw, "/req/x", &token).status, 200);
    let logs = gw.stderr();
    assert!(
        logs.contains("JWK skipped") && logs.contains("secp256k1"),
        "{logs}"
    );
    assert!(
        logs.contains("alg `PS384` is not supported for a RSA key"),
        "{logs}"
    );
}
