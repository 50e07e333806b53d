//! CONTRACT section 9, signed identity assertions: every request proxied with a verified
//! identity to an upstream (or route) with `assertion` on carries a short-lived JWT that the
//! upstream verifies against the gateway's JWKS — checked here with jsonwebtoken, as a service
//! would; a request without identity carries none, and the client's own header of that name
//! never passes.

mod common;

use common::config::{self as cfg, TestConfig};
use common::*;
use serde_json::{Value, json};

const HEADER: &str = "x-portcullis-assertion";

/// HS256 tokens (so the JWKS holds the assertion key alone), `[assertion]` with `key`, the
/// upstream `app` with assertions on and `plain` without, and routes over both.
fn config(key: &str, bind_request: bool, extra: &str) -> String {
    TestConfig::new()
        .tokens(cfg::HS256)
        .section(&format!(
            "[assertion]\nprivate_key_file = \"{{KEYS}}/{key}\"\nkid = \"assert-1\"\nttl_secs = 60\nbind_request = {bind_request}\n"
        ))
        .section(extra)
        .app(&["assertion = true"])
        .upstream("plain", "\"{UPSTREAM}\"", &[])
        .owner_route()
        .route("/req/{*rest}", "app", "required", &[])
        .route("/opt/{*rest}", "app", "optional", &[])
        .route("/public/{*rest}", "app", "public", &[])
        .route("/quiet/{*rest}", "app", "required", &["assertion = false"])
        .route("/plain/{*rest}", "plain", "required", &[])
        .route("/plain-asserted/{*rest}", "plain", "required", &["assertion = true"])
        .build()
}

fn bearer(gw: &Gateway, path: &str, token: &str) -> Response {
    gw.get(path, &[("Authorization", &format!("Bearer {token}"))])
}

// docs/downstream.md, Rust: begin
/// Verifies a Portcullis identity assertion with the gateway's JWKS document (fetch it from
/// `/.well-known/jwks.json` and cache it; refetch on an unknown `kid`).
fn verify_assertion(
    jwks: &serde_json::Value,
    assertion: &str,
    audience: &str,
    issuer: &str,
) -> Result<serde_json::Value, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let header = decode_header(assertion).map_err(|e| e.to_string())?;
    // Explicitly typed: a user's own token (same issuer, same JWKS) is never an assertion.
    if header.typ.as_deref() != Some("portcullis-assertion+jwt") {
        return Err("not a Portcullis assertion (typ)".into());
    }
    let kid = header.kid;
    let jwk = kid
        .and_then(|k| set.find(&k).cloned())
        .ok_or("unknown kid")?;
    // The algorithm comes from the published key, never from the assertion's header.
    let alg = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
        Some("EdDSA") => Algorithm::EdDSA,
        Some("ES256") => Algorithm::ES256,
        other => return Err(format!("unexpected key algorithm {other:?}")),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(alg);
    v.set_audience(&[audience]); // this service's upstream name in Portcullis
    v.set_issuer(&[issuer]); // Portcullis's tokens.issuer
    v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
    v.leeway = 5;
    decode::<serde_json::Value>(assertion, &key, &v)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
// docs/downstream.md, Rust: end

/// The one assertion the upstream received.
#[track_caller]
fn assertion_of(r: &Response) -> String {
    r.seen().one(HEADER).expect("the upstream got an assertion")
}

/// The assertion the upstream received, verified with the gateway's published key: its
/// claims. Fails unless it verifies for `aud`.
#[track_caller]
fn verified(gw: &Gateway, r: &Response, aud: &str) -> Value {
    let jwt = assertion_of(r);
    let jwks = gw.get("/.well-known/jwks.json", &[]).json();
    assert_eq!(
        jsonwebtoken::decode_header(&jwt).unwrap().kid.as_deref(),
        Some("assert-1")
    );
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == "assert-1" && k["use"] == "sig"),
        "the assertion key is in the JWKS: {jwks}"
    );
    verify_assertion(&jwks, &jwt, aud, "portcullis")
        .unwrap_or_else(|e| panic!("the assertion does not verify for {aud}: {e}"))
}

#[test]
fn requests_with_identity_carry_an_assertion_the_upstream_verifies_with_the_jwks() {
    for key in ["ed25519.pem", "p256.pem"] {
        let gw = Gateway::start(&config(key, false, ""), &[]);
        let jwks = gw.get("/.well-known/jwks.json", &[]).json();
        assert_eq!(
            jwks["keys"].as_array().unwrap().len(),
            1,
            "HS256 tokens: the assertion key alone: {jwks}"
        );
        let me = new_sub();
        let c = claims(&me);
        let token = hs256(&c);
        let r = bearer(&gw, &format!("/api/{me}/tasks/1"), &token);
        let a = verified(&gw, &r, "app");
        assert_eq!(a["sub"], me.as_str());
        assert_eq!(a["email"], c["email"]);
        let (iat, exp) = (a["iat"].as_i64().unwrap(), a["exp"].as_i64().unwrap());
        assert!((now() - iat).abs() <= 2, "iat is now");
        assert!(exp <= iat + 60 && exp <= c["exp"].as_i64().unwrap());
        assert!(uuid::Uuid::parse_str(a["jti"].as_str().unwrap()).is_ok());
        assert!(a.get("htm").is_none(), "not bound without bind_request");
        // Optional with a token: identity, so an assertion.
        verified(&gw, &bearer(&gw, "/opt/x", &token), "app");
    }
}

#[test]
fn an_assertion_never_outlives_the_token_it_stands_for() {
    let gw = Gateway::start(&config("ed25519.pem", false, ""), &[]);
    let me = new_sub();
    let token = hs256(&claims_with(&me, |c| {
        c.insert("exp".into(), json!(now() + 20));
    }));
    let a = verified(&gw, &bearer(&gw, "/req/x", &token), "app");
    assert_eq!(a["exp"], now() + 20);
}

#[test]
fn without_identity_or_with_assertions_off_no_assertion_and_the_clients_own_never_passes() {
    let gw = Gateway::start(&config("ed25519.pem", false, ""), &[]);
    let forged = [(HEADER, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.")];
    let token = token_for(&new_sub());
    let auth = format!("Bearer {token}");
    for (path, with_token) in [
        ("/public/x", false),
        ("/opt/x", false),
        ("/public/x", true),
        ("/quiet/x", true),
        ("/plain/x", true),
    ] {
        let mut h = forged.to_vec();
        if with_token {
            h.push(("Authorization", &auth));
        }
        let r = gw.get(path, &h);
        assert!(
            r.seen().all(HEADER).is_empty(),
            "{path}: no assertion may reach the upstream here"
        );
    }
    // Where one is due, the client's is replaced, never kept beside it.
    let mut h = forged.to_vec();
    h.push(("Authorization", &auth));
    let r = gw.get("/req/x", &h);
    assert_eq!(r.seen().all(HEADER).len(), 1);
    verified(&gw, &r, "app");
}

#[test]
fn the_audience_is_the_upstream_a_route_sends_to() {
    let gw = Gateway::start(&config("ed25519.pem", false, ""), &[]);
    let token = token_for(&new_sub());
    let r = bearer(&gw, "/plain-asserted/x", &token);
    verified(&gw, &r, "plain");
}

#[test]
fn unbound_assertions_are_minted_once_per_token_and_reused() {
    let gw = Gateway::start(&config("ed25519.pem", false, ""), &[]);
    let (t1, t2) = (token_for(&new_sub()), token_for(&new_sub()));
    let a1: Vec<String> = (0..20)
        .map(|_| bearer(&gw, "/req/x", &t1).seen().one(HEADER).unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&String> = a1.iter().collect();
    // One per worker thread at most (the cache is per thread, without a lock).
    assert!(
        distinct.len() <= 2,
        "{} assertions for one token",
        distinct.len()
    );
    let a2 = bearer(&gw, "/req/x", &t2).seen().one(HEADER).unwrap();
    assert!(!distinct.contains(&a2), "another token, another assertion");
    let m = get(gw.admin, "/metrics", &[]).text();
    let value = |result: &str| -> u64 {
        let prefix = format!("portcullis_assertions_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert!(value("cached") >= 18, "{m}");
    assert!((2..=3).contains(&value("minted")), "{m}");
}

#[test]
fn bound_assertions_carry_the_method_and_canonical_target_and_are_minted_per_request() {
    let gw = Gateway::start(&config("p256.pem", true, ""), &[]);
    let token = token_for(&new_sub());
    let r = gw.raw(&request_bytes(
        "DELETE",
        "/req/a/%2e%2e/b?x=1",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    ));
    let a = verified(&gw, &r, "app");
    assert_eq!(a["htm"], "DELETE");
    assert_eq!(a["htu"], "/req/b?x=1");
    let one = bearer(&gw, "/req/x", &token).seen().one(HEADER).unwrap();
    let two = bearer(&gw, "/req/x", &token).seen().one(HEADER).unwrap();
    assert_ne!(one, two);
}

#[test]
fn with_asymmetric_tokens_the_jwks_holds_both_keys() {
    let conf = config("p256.pem", false, "").replace(cfg::HS256, cfg::EDDSA);
    let gw = Gateway::start(&conf, &[]);
    let jwks = gw.get("/.well-known/jwks.json", &[]).json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    // The signing key, the retired one, then the assertion key.
    assert_eq!(kids, ["k1", "k0", "assert-1"]);
}

#[test]
fn forward_auth_answers_carry_the_assertion_of_the_matched_routes_upstream() {
    let gw = Gateway::start(
        &config("ed25519.pem", false, "[forward_auth]\nenabled = true\n"),
        &[],
    );
    let me = new_sub();
    let token = token_for(&me);
    let ask = |uri: &str| {
        gw.get(
            "/_portcullis/auth/nginx",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", uri),
                ("Authorization", &format!("Bearer {token}")),
            ],
        )
    };
    let r = ask("/req/x");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header(HEADER).is_some(),
        "the app upstream has assertions on"
    );
    let r = ask("/plain/x");
    assert_eq!(r.status, 200);
    assert!(r.header(HEADER).is_none(), "plain has them off");
}

#[test]
fn assertion_config_mistakes_are_refused_one_line_each() {
    let bad = |section: &str| {
        let conf = TestConfig::new()
            .section(section)
            .app(&[])
            .route("/req/{*rest}", "app", "required", &["assertion = true"])
            .build();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            render(
                &conf,
                &[
                    ("KEYS", keys_dir().display().to_string()),
                    ("DIR", dir.path().display().to_string()),
                    ("LISTEN", "127.0.0.1:18080".into()),
                    ("ADMIN", "127.0.0.1:18090".into()),
                    ("UPSTREAM", "127.0.0.1:9".into()),
                ],
            ),
        )
        .unwrap();
        let (status, _, err) = run_bin(
            &["check-config", "--config", path.to_str().unwrap()],
            &[(SECRET_ENV, SECRET)],
            dir.path(),
            std::time::Duration::from_secs(30),
        );
        assert_eq!(status.code(), Some(1), "{section}: {err}");
        err
    };
    let key = "private_key_file = \"{KEYS}/ed25519.pem\"\nkid = \"a\"\n";
    for (section, says) in [
        ("", "needs an [assertion] section"),
        ("[assertion]\nkid = \"a\"\n", "private_key_file is required"),
        (
            "[assertion]\nprivate_key_file = \"{KEYS}/ed25519.pem\"\n",
            "kid is required",
        ),
        (
            "[assertion]\nprivate_key_file = \"{KEYS}/rsa.pem\"\nkid = \"a\"\n",
            "Ed25519 or P-256",
        ),
        (&format!("[assertion]\n{key}ttl_secs = 0\n"), "ttl_secs"),
        (&format!("[assertion]\n{key}ttl_secs = 301\n"), "ttl_secs"),
        (
            &format!("[assertion]\n{key}header = \"X-User-Id\"\n"),
            "assertion.header",
        ),
        (
            &format!("[assertion]\n{key}header = \"bad header\"\n"),
            "assertion.header",
        ),
        (
            &format!("[assertion]\n{key}algorithm = \"EdDSA\"\n"),
            "algorithm",
        ),
        (
            &format!("[assertion]\n{key}header = \"Origin\"\n"),
            "assertion.header",
        ),
        (
            &format!("[assertion]\n{key}header = \"X-Forwarded-Assertion\"\n"),
            "assertion.header",
        ),
    ] {
        let err = bad(section);
        assert_eq!(err.lines().count(), 1, "{section}: {err}");
        assert!(err.contains(says), "{section}: {err}");
    }
}

/// Runs one of docs/downstream's snippets: (exit code, stdout).
fn snippet(program: &str, script: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = manifest_dir().join("docs/downstream");
    let out = std::process::Command::new(program)
        .arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} {script}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError") && !stderr.contains("ERR_MODULE_NOT_FOUND"),
        "{script}: its packages are missing (.ci/run installs them: pip install -r \
         docs/downstream/requirements.txt, npm ci --prefix docs/downstream): {stderr}"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_python_node_and_rust_snippets_verify_a_live_assertion_and_refuse_bad_ones() {
    for key in ["ed25519.pem", "p256.pem"] {
        let gw = Gateway::start(&config(key, false, ""), &[]);
        let me = new_sub();
        let jwt = assertion_of(&bearer(&gw, "/req/x", &token_for(&me)));
        let jwks_url = format!("http://{}/.well-known/jwks.json", gw.addr);
        let jwks = gw.get("/.well-known/jwks.json", &[]).json();
        assert_eq!(
            verify_assertion(&jwks, &jwt, "app", "portcullis").unwrap()["sub"],
            me.as_str()
        );
        // A byte of the signature changed, another service's audience, another issuer.
        let forged = tamper_signature(&jwt);
        for (program, script) in [("python3", "verify.py"), ("node", "verify.mjs")] {
            let (code, out) = snippet(program, script, &[&jwks_url, "app", "portcullis", &jwt]);
            assert_eq!(code, Some(0), "{script} ({key}): {out}");
            let claims: Value = serde_json::from_str(out.trim()).unwrap();
            assert_eq!(claims["sub"], me.as_str(), "{script}");
            assert_eq!(claims["aud"], "app");
            for (aud, iss, token) in [
                ("app", "portcullis", forged.as_str()),
                ("billing", "portcullis", jwt.as_str()),
                ("app", "someone-else", jwt.as_str()),
            ] {
                let (code, out) = snippet(program, script, &[&jwks_url, aud, iss, token]);
                assert_eq!(code, Some(1), "{script} accepted {aud} {iss}: {out}");
                assert!(out.starts_with("refused"), "{out}");
            }
            assert!(verify_assertion(&jwks, &forged, "app", "portcullis").is_err());
            assert!(verify_assertion(&jwks, &jwt, "billing", "portcullis").is_err());
        }
    }
}

#[test]
fn a_users_own_token_never_passes_for_an_assertion_in_any_snippet() {
    // EdDSA tokens: the token key k1 is in the same JWKS as the assertion key, with the same
    // issuer. A token minted for the audience `app` then differs from an assertion only by its
    // `typ`, which every snippet checks.
    let conf = config("p256.pem", false, "").replace(cfg::HS256, cfg::EDDSA);
    let gw = Gateway::start(&conf, &[]);
    let me = new_sub();
    let forged = sign_pem(
        jsonwebtoken::Algorithm::EdDSA,
        "ed25519.pem",
        Some("k1"),
        &claims_with(&me, |c| {
            c.insert("aud".into(), json!("app"));
        }),
    );
    let jwks_url = format!("http://{}/.well-known/jwks.json", gw.addr);
    let jwks = gw.get("/.well-known/jwks.json", &[]).json();
    let e = verify_assertion(&jwks, &forged, "app", "portcullis").unwrap_err();
    assert!(e.contains("typ"), "{e}");
    for (program, script) in [("python3", "verify.py"), ("node", "verify.mjs")] {
        let (code, out) = snippet(program, script, &[&jwks_url, "app", "portcullis", &forged]);
        assert_eq!(
            code,
            Some(1),
            "{script} took a user's token for an assertion: {out}"
        );
    }
    // And the gateway's own assertion still passes.
    let token = sign_pem(
        jsonwebtoken::Algorithm::EdDSA,
        "ed25519.pem",
        Some("k1"),
        &claims(&me),
    );
    let real = assertion_of(&bearer(&gw, "/req/x", &token));
    assert!(verify_assertion(&jwks, &real, "app", "portcullis").is_ok());
}

#[test]
fn docs_downstream_shows_the_snippets_the_tests_run() {
    let doc = std::fs::read_to_string(manifest_dir().join("docs/downstream.md")).unwrap();
    let dir = manifest_dir().join("docs/downstream");
    let this = std::fs::read_to_string(manifest_dir().join("tests/assertions.rs")).unwrap();
    let rust = this
        .split("// docs/downstream.md, Rust: begin\n")
        .nth(1)
        .and_then(|s| s.split("// docs/downstream.md, Rust: end").next())
        .unwrap();
    let py = std::fs::read_to_string(dir.join("verify.py")).unwrap();
    let node = std::fs::read_to_string(dir.join("verify.mjs")).unwrap();
    for (what, text) in [
        ("Rust", rust),
        ("Python", py.as_str()),
        ("Node", node.as_str()),
    ] {
        assert!(
            doc.contains(text.trim()),
            "docs/downstream.md must show the {what} snippet as run"
        );
    }
}

/// `check-config` on `conf` (placeholders filled): exit code and stderr.
fn check_config(conf: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let vars = [
        ("KEYS", keys_dir().display().to_string()),
        ("DIR", dir.path().display().to_string()),
        ("LISTEN", "127.0.0.1:18081".into()),
        ("ADMIN", "127.0.0.1:18091".into()),
        ("UPSTREAM", "127.0.0.1:9".into()),
    ];
    std::fs::write(&path, render(conf, &vars)).unwrap();
    let (status, _, err) = run_bin(
        &["check-config", "--config", path.to_str().unwrap()],
        &[(SECRET_ENV, SECRET)],
        dir.path(),
        std::time::Duration::from_secs(30),
    );
    (status.code(), err)
}

#[test]
fn an_assertion_is_kept_apart_from_the_tokens_by_kid_and_audience() {
    // The token key is `k1`: an assertion key of that kid is refused.
    let same_kid = config("p256.pem", false, "")
        .replace(cfg::HS256, cfg::EDDSA)
        .replace("kid = \"assert-1\"", "kid = \"k1\"");
    let (code, err) = check_config(&same_kid);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("assertion.kid `k1`"), "{err}");
    // An upstream named like tokens.audience (`portcullis`) may not receive assertions.
    let same_aud = TestConfig::new()
        .section("[assertion]\nprivate_key_file = \"{KEYS}/ed25519.pem\"\nkid = \"a\"\n")
        .upstream("portcullis", "\"{UPSTREAM}\"", &["assertion = true"])
        .route("/req/{*rest}", "portcullis", "required", &[])
        .build();
    let (code, err) = check_config(&same_aud);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tokens.audience"), "{err}");
}

#[test]
fn the_clients_assertion_header_is_stripped_in_every_spelling() {
    let gw = Gateway::start(&config("ed25519.pem", false, ""), &[]);
    for path in ["/public/x", "/req/x"] {
        let r = gw.get(
            path,
            &[
                ("X_Portcullis_Assertion", "forged"),
                ("x-portcullis_assertion", "forged"),
                (
                    "Authorization",
                    &format!("Bearer {}", token_for(&new_sub())),
                ),
            ],
        );
        let seen = r.seen();
        let forged: Vec<&(String, String)> = seen
            .headers
            .iter()
            .filter(|(n, v)| n.to_ascii_lowercase().replace('_', "-") == HEADER && v == "forged")
            .collect();
        assert!(forged.is_empty(), "{path}: {forged:?}");
    }
}
