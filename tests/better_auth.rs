//! Interop with a real Better Auth server (CONTRACT 12), black-box: `better-auth` from npm
//! (`tests/better-auth/`, installed by `npm ci --prefix tests/better-auth`; Postgres through the
//! pure-JS `pg` driver, a schema of its own per server) with its JWT plugin, started by the test.
//! A user signs up, its JWT comes from `GET /api/auth/token`, and the real gateway trusts it by
//! the JWKS at `/api/auth/jwks`: every algorithm Better Auth offers, a key rotated by
//! `jwks.rotationInterval` (the new key is made when it first signs), and expiry. Better Auth's
//! tokens carry no `jti`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::*;
use serde_json::{Value, json};

/// A running Better Auth server; stopped (and its schema dropped) on drop.
struct BetterAuth {
    child: Child,
    port: u16,
}

impl BetterAuth {
    fn start(env: &[(&str, &str)]) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/better-auth");
        assert!(
            std::path::Path::new(dir)
                .join("node_modules/better-auth")
                .is_dir(),
            "tests/better-auth/node_modules is missing: run `npm ci --prefix tests/better-auth` \
             (.ci/run does)"
        );
        let db = std::env::var("TEST_DATABASE_URL").expect(
            "TEST_DATABASE_URL must point at a Postgres server: the Better Auth tests never skip",
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(dir)
            .env("DATABASE_URL", db)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs tests/better-auth/server.mjs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("Better Auth did not start: {line:?}"));
        Self { child, port }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Signs a new user up: its id and session token (the bearer plugin's `set-auth-token`).
    fn sign_up(&self) -> (String, String, String) {
        let email = format!("{}@ba.example.test", &new_sub()[..8]);
        let body = json!({"email": email, "password": "correct horse battery", "name": "Ada"});
        let origin = self.base();
        let r = send_raw(
            self.addr(),
            &request_bytes(
                "POST",
                "/api/auth/sign-up/email",
                &[("Content-Type", "application/json"), ("Origin", &origin)],
                Some(body.to_string().as_bytes()),
            ),
        );
        assert_eq!(r.status, 200, "sign-up: {}", r.text());
        let session = r
            .header("set-auth-token")
            .expect("the bearer plugin's session token")
            .to_owned();
        let id = r.json()["user"]["id"].as_str().unwrap().to_owned();
        (id, email, session)
    }

    /// A JWT for the session, from `GET /api/auth/token`.
    fn jwt(&self, session: &str) -> String {
        let r = get(
            self.addr(),
            "/api/auth/token",
            &[("Authorization", &format!("Bearer {session}"))],
        );
        assert_eq!(r.status, 200, "token: {}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for BetterAuth {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
    }
}

/// A gateway trusting `ba` (issuer and audience its base URL), `leeway_secs` for the tokens.
fn gateway(ba: &BetterAuth, leeway_secs: u64) -> Gateway {
    let base = ba.base();
    let config = TestConfig::new()
        .tokens(&format!(
            "[tokens]\nalgorithm = \"HS256\"\nsecret_env = \"PORTCULLIS_TEST_SECRET\"\n\
             issuer = \"portcullis\"\naudience = \"portcullis\"\nleeway_secs = {leeway_secs}\n"
        ))
        .app(&[])
        .route("/req/{*rest}", "app", "required", &[])
        .section(&format!(
            "[[issuer]]\nname = \"better-auth\"\njwks_url = \"{base}/api/auth/jwks\"\n\
             issuer = \"{base}\"\naudience = \"{base}\"\n"
        ))
        .build();
    let gw = Gateway::start(&config, &[]);
    gw.wait_ready(
        Duration::from_secs(15),
        "the gateway fetched Better Auth's JWKS",
    );
    gw
}

fn claims_of(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| -> Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    (part(0), part(1))
}

fn bearer(gw: &Gateway, token: &str) -> Response {
    gw.get("/req/x", &[("Authorization", &format!("Bearer {token}"))])
}

#[test]
fn better_auth_tokens_of_every_algorithm_it_offers_pass_with_their_identity() {
    for alg in ["EdDSA", "ES256", "ES384", "ES512", "RS256", "PS256"] {
        let ba = BetterAuth::start(&[("BA_ALG", alg)]);
        let (id, email, session) = ba.sign_up();
        let token = ba.jwt(&session);
        let (header, claims) = claims_of(&token);
        assert_eq!(header["alg"], alg, "{header}");
        assert!(
            claims.get("jti").is_none(),
            "Better Auth mints no jti: {claims}"
        );
        let gw = gateway(&ba, 30);
        let r = bearer(&gw, &token);
        assert_eq!(r.status, 200, "{alg}: {}", r.text());
        assert_identity(&r.seen(), Some((&id, Some(&email))));
        // Tampered: refused.
        let mut evil = token.clone();
        evil.push('A');
        assert_401(&bearer(&gw, &evil), "invalid_token", true);
        eprintln!("better-auth {alg}: trusted, identity {id}");
    }
}

#[test]
fn a_key_better_auth_rotates_in_is_trusted_on_its_first_request_and_the_old_one_while_published() {
    // rotationInterval 2 s: the first token signed after it makes a new key. Better Auth
    // unpublishes a key gracePeriod after it expires; 60 s keeps the old one published for the
    // whole test (a 2 s grace made this test race the gateway's start on a loaded machine).
    let ba = BetterAuth::start(&[
        ("BA_ALG", "EdDSA"),
        ("BA_ROTATION_SECS", "2"),
        ("BA_GRACE_SECS", "60"),
    ]);
    let (id, email, session) = ba.sign_up();
    let old = ba.jwt(&session);
    let gw = gateway(&ba, 30);
    assert_eq!(bearer(&gw, &old).status, 200);
    thread::sleep(Duration::from_millis(2500));
    let new = ba.jwt(&session);
    let (old_kid, new_kid) = (
        claims_of(&old).0["kid"].clone(),
        claims_of(&new).0["kid"].clone(),
    );
    assert_ne!(old_kid, new_kid, "Better Auth rotated its key");
    let sent = Instant::now();
    let r = bearer(&gw, &new);
    let waited = sent.elapsed();
    assert_eq!(r.status, 200, "the new key's first token: {}", r.text());
    assert_identity(&r.seen(), Some((&id, Some(&email))));
    eprintln!("better-auth rotation: the new kid's first request answered in {waited:?}");
    assert_eq!(
        bearer(&gw, &old).status,
        200,
        "the old key is still published"
    );
}

#[test]
fn a_better_auth_token_is_refused_once_it_expires() {
    let ba = BetterAuth::start(&[("BA_ALG", "ES256"), ("BA_JWT_EXPIRES", "2s")]);
    let (_, _, session) = ba.sign_up();
    let token = ba.jwt(&session);
    let (_, claims) = claims_of(&token);
    let exp = claims["exp"].as_u64().unwrap();
    let gw = gateway(&ba, 0);
    assert_eq!(bearer(&gw, &token).status, 200);
    while u64::try_from(now()).unwrap() <= exp {
        thread::sleep(Duration::from_millis(200));
    }
    assert_401(&bearer(&gw, &token), "token_expired", true);
}
