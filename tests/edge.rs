//! The edge, black-box: the real `portcullis serve` in front of a recording upstream.
//! Pins CONTRACT.md sections 1-5 and 7 and every rule of docs/edge-decisions.md.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// configs
// ---------------------------------------------------------------------------------------------

const BASE: &str = r#"
[server]
listen = "{LISTEN}"
admin_listen = "{ADMIN}"
threads = 2

[store]
url = "sqlite://{DIR}/p.db"

{TOKENS}

[cookie]
name = "pc_tok"
secure = false
same_site = "Lax"

[[upstream]]
name = "app"
addrs = ["{UPSTREAM}"]
connect_timeout_ms = 1000
read_timeout_ms = 5000

{UPSTREAMS}

[[route]]
path = "/api/{user_id}/tasks/{*rest}"
upstream = "app"
auth = "required"
owner = "user_id"

[[route]]
path = "/api/health"
upstream = "app"
auth = "public"

[[route]]
path = "/api/{*rest}"
upstream = "app"
auth = "public"

[[route]]
path = "/public/{*rest}"
upstream = "app"
auth = "public"

[[route]]
path = "/opt/{*rest}"
upstream = "app"
auth = "optional"

[[route]]
path = "/req/{*rest}"
upstream = "app"
auth = "required"

[[route]]
path = "/fwd/{*rest}"
upstream = "app"
auth = "required"
forward_token = true

{ROUTES}
"#;

const HS_TOKENS: &str = r#"
[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

const ED_TOKENS: &str = r#"
[tokens]
algorithm = "EdDSA"
private_key_file = "{KEYS}/ed25519.pem"
kid = "k1"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30

[[tokens.previous_keys]]
kid = "k0"
public_key_file = "{KEYS}/ed25519-old.pub.pem"
"#;

const ES_TOKENS: &str = r#"
[tokens]
algorithm = "ES256"
private_key_file = "{KEYS}/p256.pem"
kid = "ec1"
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

const RS_TOKENS: &str = r#"
[tokens]
algorithm = "RS256"
private_key_file = "{KEYS}/rsa.pem"
kid = "rsa1"
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 30
"#;

fn config(tokens: &str, upstreams: &str, routes: &str) -> String {
    BASE.replace("{TOKENS}", tokens)
        .replace("{UPSTREAMS}", upstreams)
        .replace("{ROUTES}", routes)
}

fn hs_gateway() -> Gateway {
    Gateway::start(&config(HS_TOKENS, "", ""), &[])
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

// ---------------------------------------------------------------------------------------------
// required routes: credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn required_route_without_token_is_401_missing_token_without_error_attribute() {
    let gw = hs_gateway();
    let r = gw.get("/req/x", &[]);
    assert_401(&r, "missing_token", false);
    gw.up().assert_not_called();
}

#[test]
fn valid_bearer_injects_identity_and_strips_authorization() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let r = bearer(&gw, "/req/x?q=1", &hs256(&c));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.request_id().is_some(),
        "x-request-id on proxied responses"
    );
    let seen = r.seen();
    assert_eq!(seen.path, "/req/x?q=1");
    assert_identity(&seen, Some((&sub, Some(&email_of(&c)))));
    assert!(
        seen.all("authorization").is_empty(),
        "Authorization must not reach the upstream: {:?}",
        seen.headers
    );
    assert_eq!(gw.up().proxied_count(), 1);
}

#[test]
fn bearer_scheme_is_case_insensitive() {
    let gw = hs_gateway();
    let sub = new_sub();
    let t = token_for(&sub);
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let r = gw.get("/req/x", &[("Authorization", &format!("{scheme} {t}"))]);
        assert_eq!(r.status, 200, "scheme {scheme}: {}", r.text());
        let seen = r.seen();
        assert_identity(&seen, Some((&sub, Some(&email_of(&claims(&sub))))));
        assert!(
            seen.all("authorization").is_empty(),
            "scheme {scheme}: Authorization leaked"
        );
    }
}

#[test]
fn cookie_only_token_is_accepted_and_the_emptied_cookie_header_dropped() {
    let gw = hs_gateway();
    let sub = new_sub();
    let r = cookie(&gw, "/req/x", &format!("pc_tok={}", token_for(&sub)));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.all("x-user-id"), vec![sub.clone()]);
    assert!(
        seen.all("cookie").is_empty(),
        "an emptied Cookie header must be dropped: {:?}",
        seen.all("cookie")
    );
}

#[test]
fn only_the_auth_cookie_is_removed_other_cookies_pass() {
    let gw = hs_gateway();
    let sub = new_sub();
    let r = cookie(
        &gw,
        "/req/x",
        &format!("theme=dark; pc_tok={}; lang=en", token_for(&sub)),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.all("x-user-id"), vec![sub]);
    assert_eq!(
        seen.cookies(),
        vec![
            ("theme".to_string(), "dark".to_string()),
            ("lang".to_string(), "en".to_string())
        ],
        "other cookies pass, the auth cookie does not"
    );
}

#[test]
fn cookie_with_another_name_is_not_a_credential() {
    let gw = hs_gateway();
    let sub = new_sub();
    // the default cookie name, but this gateway is configured with `pc_tok`
    let r = cookie(
        &gw,
        "/req/x",
        &format!("portcullis_token={}", token_for(&sub)),
    );
    assert_401(&r, "missing_token", false);
    gw.up().assert_not_called();
}

#[test]
fn bearer_header_takes_precedence_over_cookie_and_both_are_stripped() {
    let gw = hs_gateway();
    let a = new_sub();
    let b = new_sub();
    let r = gw.get(
        "/req/x",
        &[
            ("Authorization", &format!("Bearer {}", token_for(&a))),
            ("Cookie", &format!("x=1; pc_tok={}", token_for(&b))),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(
        seen.all("x-user-id"),
        vec![a],
        "identity comes from the Authorization header"
    );
    assert!(seen.all("authorization").is_empty());
    assert_eq!(seen.cookies(), vec![("x".to_string(), "1".to_string())]);

    // a bad cookie is not consulted when a valid Bearer is present
    let c = new_sub();
    let r = gw.get(
        "/req/x",
        &[
            ("Authorization", &format!("Bearer {}", token_for(&c))),
            ("Cookie", "pc_tok=garbage"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().all("x-user-id"), vec![c]);
}

#[test]
fn forward_token_on_route_keeps_bearer_and_cookie() {
    let gw = hs_gateway();
    let sub = new_sub();
    let t = token_for(&sub);
    let r = gw.get(
        "/fwd/x",
        &[
            ("Authorization", &format!("Bearer {t}")),
            ("Cookie", &format!("a=1; pc_tok={t}")),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_identity(&seen, Some((&sub, Some(&email_of(&claims(&sub))))));
    assert_eq!(seen.all("authorization"), vec![format!("Bearer {t}")]);
    assert!(
        seen.cookies().contains(&("pc_tok".to_string(), t.clone())),
        "auth cookie forwarded: {:?}",
        seen.cookies()
    );
    assert!(seen.cookies().contains(&("a".to_string(), "1".to_string())));
}

#[test]
fn forward_token_on_upstream_keeps_the_credential() {
    let upstreams = r#"
[[upstream]]
name = "keeper"
addrs = ["{UPSTREAM}"]
forward_token = true
"#;
    let routes = r#"
[[route]]
path = "/keep/{*rest}"
upstream = "keeper"
auth = "required"
"#;
    let gw = Gateway::start(&config(HS_TOKENS, upstreams, routes), &[]);
    let sub = new_sub();
    let t = token_for(&sub);
    let r = bearer(&gw, "/keep/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.all("x-user-id"), vec![sub.clone()]);
    assert_eq!(seen.all("authorization"), vec![format!("Bearer {t}")]);
    let r = cookie(&gw, "/keep/x", &format!("pc_tok={t}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().cookies(), vec![("pc_tok".to_string(), t.clone())]);

    // a route on an upstream without forward_token still strips it
    let r = bearer(&gw, "/req/x", &t);
    assert!(r.seen().all("authorization").is_empty());
}

#[test]
fn basic_authorization_is_forwarded_untouched_and_the_cookie_is_consulted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let basic = "Basic dXNlcjpwYXNzd29yZA==";
    let r = gw.get(
        "/req/x",
        &[
            ("Authorization", basic),
            ("Cookie", &format!("pc_tok={}; z=9", token_for(&sub))),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.all("x-user-id"), vec![sub]);
    assert_eq!(
        seen.all("authorization"),
        vec![basic.to_string()],
        "Basic must pass untouched"
    );
    assert_eq!(seen.cookies(), vec![("z".to_string(), "9".to_string())]);

    // Basic alone is not a token
    let r = gw.get("/req/x", &[("Authorization", basic)]);
    assert_401(&r, "missing_token", false);
}

#[test]
fn token_in_query_string_is_ignored() {
    let gw = hs_gateway();
    let t = token_for(&new_sub());
    let r = gw.get(
        &format!("/req/x?access_token={t}&token={t}&jwt={t}&pc_tok={t}"),
        &[],
    );
    assert_401(&r, "missing_token", false);
    assert_no_token_echo(&r, &t);
    gw.up().assert_not_called();
}

#[test]
fn duplicate_authorization_headers_are_400_bad_request() {
    let gw = hs_gateway();
    let t = token_for(&new_sub());
    let b = format!("Bearer {t}");
    for pair in [[b.as_str(), b.as_str()], [b.as_str(), "Basic dXNlcjpwYXNz"]] {
        let r = gw.get(
            "/req/x",
            &[("Authorization", pair[0]), ("Authorization", pair[1])],
        );
        assert_problem(&r, 400, "bad_request");
        assert_no_token_echo(&r, &t);
    }
    gw.up().assert_not_called();
}

#[test]
fn duplicate_auth_cookie_is_400_bad_request() {
    let gw = hs_gateway();
    let t = token_for(&new_sub());
    let r = cookie(&gw, "/req/x", &format!("pc_tok={t}; pc_tok={t}"));
    assert_problem(&r, 400, "bad_request");
    let r = gw.get(
        "/req/x",
        &[
            ("Cookie", &format!("pc_tok={t}")),
            ("Cookie", &format!("a=b; pc_tok={t}")),
        ],
    );
    assert_problem(&r, 400, "bad_request");
    assert_no_token_echo(&r, &t);
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// token rejections
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_signature_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(b"another-secret-that-is-long-enough-000000", &c, None),
        "invalid_token",
    );
}

#[test]
fn tampered_signature_is_invalid_token() {
    let gw = hs_gateway();
    assert_rejected(
        &gw,
        &tamper_signature(&token_for(&new_sub())),
        "invalid_token",
    );
}

#[test]
fn swapped_payload_with_original_signature_is_invalid_token() {
    let gw = hs_gateway();
    let victim = new_sub();
    let forged = swap_payload(&token_for(&new_sub()), &claims(&victim));
    assert_rejected(&gw, &forged, "invalid_token");
}

#[test]
fn alg_none_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(&gw, &alg_none(&c), "invalid_token");
    for alg in ["None", "NONE", "nOnE"] {
        let h = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        let p = b64url(c.to_string().as_bytes());
        assert_rejected(&gw, &format!("{h}.{p}."), "invalid_token");
    }
    // alg none with a (valid HS256) signature attached
    let hs = hs256(&c);
    let sig = hs.rsplit_once('.').unwrap().1;
    assert_rejected(&gw, &format!("{}{sig}", alg_none(&c)), "invalid_token");
}

#[test]
fn asymmetric_token_on_hs256_gateway_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", None, &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", None, &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", None, &c),
        "invalid_token",
    );
}

#[test]
fn hs256_header_claiming_another_alg_is_invalid_token() {
    // signed with the right secret, but the header says HS384 / HS512 / RS256
    let gw = hs_gateway();
    let c = claims(&new_sub());
    for alg in ["HS384", "HS512", "RS256"] {
        let t = hs256_raw_header(
            &format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
            &c,
            SECRET.as_bytes(),
        );
        assert_rejected(&gw, &t, "invalid_token");
    }
    // sanity: the same forging helper with the honest header is accepted
    let sub = new_sub();
    let ok = hs256_raw_header(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims(&sub),
        SECRET.as_bytes(),
    );
    assert_accepted(&gw, &ok, &sub);
}

#[test]
fn missing_required_claims_are_invalid_token() {
    let gw = hs_gateway();
    for claim in ["exp", "sub", "iss", "aud"] {
        let c = claims_with(&new_sub(), |m| {
            m.remove(claim);
        });
        let t = hs256(&c);
        let r = bearer(&gw, "/req/x", &t);
        assert_401(&r, "invalid_token", true);
        assert_no_token_echo(&r, &t);
    }
    gw.up().assert_not_called();
}

#[test]
fn wrong_issuer_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("iss".into(), json!("someone-else"));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn wrong_audience_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!("someone-else"));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
    let c = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!(["a", "b"]));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn audience_array_containing_ours_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("aud".into(), json!(["other", AUDIENCE]));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn future_nbf_beyond_leeway_is_invalid_token() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("nbf".into(), json!(now() + 120));
    });
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn nbf_within_leeway_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("nbf".into(), json!(now() + 10));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn expired_beyond_leeway_is_token_expired() {
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("iat".into(), json!(now() - 4000));
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(&gw, &hs256(&c), "token_expired");
}

#[test]
fn expired_within_leeway_is_accepted() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.insert("iat".into(), json!(now() - 4000));
        m.insert("exp".into(), json!(now() - 10));
    });
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn expired_token_with_bad_signature_is_invalid_not_expired() {
    // claims of an unverified token must not be trusted, not even to say "expired"
    let gw = hs_gateway();
    let c = claims_with(&new_sub(), |m| {
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(
        &gw,
        &hs256_with(b"not-the-secret-not-the-secret-not-the-secret", &c, None),
        "invalid_token",
    );
}

#[test]
fn oversized_token_is_invalid_token() {
    let gw = hs_gateway();
    let t = oversized_token(&new_sub());
    let r = bearer(&gw, "/req/x", &t);
    assert_401(&r, "invalid_token", true);
    assert_no_token_echo(&r, &t);
    gw.up().assert_not_called();
}

#[test]
fn malformed_bearer_is_invalid_token() {
    let gw = hs_gateway();
    for value in [
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer a.b",
        "Bearer ....",
        "Bearer !!!.???.***",
    ] {
        let r = gw.get("/req/x", &[("Authorization", value)]);
        assert_401(&r, "invalid_token", true);
    }
    let r = cookie(&gw, "/req/x", "pc_tok=garbage");
    assert_401(&r, "invalid_token", true);
    gw.up().assert_not_called();
}

#[test]
fn unusable_sub_or_email_is_invalid_token() {
    let gw = hs_gateway();
    let bad: Vec<(&str, Value)> = vec![
        ("sub", json!("abc\r\nX-User-Role: admin")),
        ("sub", json!("bad\u{0}nul")),
        ("sub", json!("jürgen")),
        ("sub", json!("has space")),
        ("sub", json!("a".repeat(257))),
        ("sub", json!(12345)),
        ("email", json!("a@b.test\r\nX-User-Role: admin")),
        ("email", json!("\u{7f}@b.test")),
        ("email", json!(format!("{}@b.test", "e".repeat(260)))),
    ];
    for (claim, value) in bad {
        let c = claims_with(&new_sub(), |m| {
            m.insert(claim.into(), value.clone());
        });
        let t = hs256(&c);
        let r = bearer(&gw, "/req/x", &t);
        assert_eq!(r.status, 401, "{claim}={value}: {}", r.text());
        assert_401(&r, "invalid_token", true);
    }
    gw.up().assert_not_called();
}

#[test]
fn sub_of_256_visible_ascii_bytes_is_accepted() {
    let gw = hs_gateway();
    let sub = "s".repeat(256);
    let c = claims(&sub);
    assert_accepted(&gw, &hs256(&c), &sub);
}

#[test]
fn token_without_email_injects_only_user_id() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims_with(&sub, |m| {
        m.remove("email");
    });
    let r = bearer(&gw, "/req/x", &hs256(&c));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&r.seen(), Some((&sub, None)));
}

#[test]
fn previous_hs256_secret_is_still_accepted() {
    let tokens = format!(
        "{HS_TOKENS}\n[[tokens.previous_keys]]\nsecret_env = \"PORTCULLIS_TEST_OLD_SECRET\"\n"
    );
    let old = "an-older-secret-that-is-also-32-bytes-long!!";
    let gw = Gateway::start(
        &config(&tokens, "", ""),
        &[("PORTCULLIS_TEST_OLD_SECRET", old)],
    );
    let sub = new_sub();
    assert_accepted(&gw, &hs256_with(old.as_bytes(), &claims(&sub), None), &sub);
    let sub2 = new_sub();
    assert_accepted(&gw, &token_for(&sub2), &sub2);
    let r = bearer(
        &gw,
        "/req/x",
        &hs256_with(
            b"neither-current-nor-previous-secret-xx",
            &claims(&sub),
            None,
        ),
    );
    assert_401(&r, "invalid_token", true);
}

// ---------------------------------------------------------------------------------------------
// owner rule
// ---------------------------------------------------------------------------------------------

#[test]
fn owner_mismatch_is_403_forbidden() {
    let gw = hs_gateway();
    let me = new_sub();
    let other = new_sub();
    let t = token_for(&me);
    let r = bearer(&gw, &format!("/api/{other}/tasks/x"), &t);
    assert_problem(&r, 403, "forbidden");
    assert_no_token_echo(&r, &t);
    gw.up().assert_not_called();
}

#[test]
fn owner_match_is_200() {
    let gw = hs_gateway();
    let me = new_sub();
    let r = bearer(
        &gw,
        &format!("/api/{me}/tasks/list?page=2"),
        &token_for(&me),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.path, format!("/api/{me}/tasks/list?page=2"));
    assert_identity(&seen, Some((&me, Some(&email_of(&claims(&me))))));
}

#[test]
fn owner_route_without_token_is_401_not_403() {
    let gw = hs_gateway();
    let r = gw.get(&format!("/api/{}/tasks/x", new_sub()), &[]);
    assert_401(&r, "missing_token", false);
    gw.up().assert_not_called();
}

#[test]
fn owner_comparison_is_exact() {
    let gw = hs_gateway();
    let me = "abcdef01-2345-4678-89ab-cdef01234567";
    let t = token_for(me);
    let r = bearer(&gw, &format!("/api/{}/tasks/x", me.to_uppercase()), &t);
    assert_problem(&r, 403, "forbidden");
    let r = bearer(&gw, &format!("/api/{me}x/tasks/x"), &t);
    assert_problem(&r, 403, "forbidden");
    gw.up().assert_not_called();
    // an unreserved escape is decoded before the comparison
    let r = bearer(
        &gw,
        "/api/%61bcdef01-2345-4678-89ab-cdef01234567/tasks/x",
        &t,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().path, format!("/api/{me}/tasks/x"));
}

#[test]
fn traversal_into_another_users_tasks_is_forbidden() {
    let gw = hs_gateway();
    let me = new_sub();
    let other = new_sub();
    let t = token_for(&me);
    for path in [
        format!("/api/{me}/tasks/../../{other}/tasks/x"),
        format!("/api/{me}/tasks/%2e%2e/%2e%2e/{other}/tasks/x"),
        format!("/api/{me}/tasks/x/../../../{other}/tasks/x"),
    ] {
        let r = bearer(&gw, &path, &t);
        assert_problem(&r, 403, "forbidden");
    }
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// optional and public routes
// ---------------------------------------------------------------------------------------------

#[test]
fn optional_route_without_token_passes_anonymously() {
    let gw = hs_gateway();
    let r = gw.get("/opt/x", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&r.seen(), None);
}

#[test]
fn optional_route_with_valid_token_injects_identity() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let r = bearer(&gw, "/opt/x", &hs256(&c));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_identity(&seen, Some((&sub, Some(&email_of(&c)))));
    assert!(seen.all("authorization").is_empty());
    let r = cookie(&gw, "/opt/x", &format!("pc_tok={}", hs256(&c)));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_identity(&seen, Some((&sub, Some(&email_of(&c)))));
    assert!(seen.all("cookie").is_empty());
}

#[test]
fn optional_route_with_bad_token_is_401() {
    let gw = hs_gateway();
    let sub = new_sub();
    let r = bearer(&gw, "/opt/x", &tamper_signature(&token_for(&sub)));
    assert_401(&r, "invalid_token", true);
    let expired = hs256(&claims_with(&sub, |m| {
        m.insert("exp".into(), json!(now() - 300));
    }));
    let r = bearer(&gw, "/opt/x", &expired);
    assert_401(&r, "token_expired", true);
    let r = cookie(&gw, "/opt/x", "pc_tok=garbage");
    assert_401(&r, "invalid_token", true);
    let r = gw.get("/opt/x", &[("Authorization", "Bearer ")]);
    assert_401(&r, "invalid_token", true);
    gw.up().assert_not_called();
}

#[test]
fn public_route_passes_without_token() {
    let gw = hs_gateway();
    let r = gw.get("/public/x?y=1", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.path, "/public/x?y=1");
    assert_identity(&seen, None);
}

#[test]
fn public_route_does_not_verify_tokens_but_strips_them() {
    let gw = hs_gateway();
    // garbage and expired tokens pass: public routes check nothing
    let expired = hs256(&claims_with(&new_sub(), |m| {
        m.insert("exp".into(), json!(now() - 3000));
    }));
    for t in ["garbage", expired.as_str()] {
        let r = bearer(&gw, "/public/x", t);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = r.seen();
        assert!(
            seen.all("authorization").is_empty(),
            "Bearer stripped on public routes"
        );
        assert_identity(&seen, None);
        let r = cookie(&gw, "/public/x", &format!("a=b; pc_tok={t}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.seen().cookies(), vec![("a".to_string(), "b".to_string())]);
    }
    // a valid token is not verified either: no identity on a public route, and still stripped
    let r = bearer(&gw, "/public/x", &token_for(&new_sub()));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert!(seen.all("authorization").is_empty());
    assert_identity(&seen, None);
}

// ---------------------------------------------------------------------------------------------
// spoofing: the client can never set identity
// ---------------------------------------------------------------------------------------------

const SPOOF: &[(&str, &str)] = &[
    ("X-User-Id", "spoofed-1"),
    ("x-user-id", "spoofed-2"),
    ("X-USER-EMAIL", "spoofed-3@evil.test"),
    ("X_User_Id", "spoofed-4"),
    ("x_user-id", "spoofed-5"),
    ("X-User-Role", "spoofed-admin"),
    ("X-User-Id", "spoofed-6"),
    ("x-UsEr-EmAiL", "spoofed-7@evil.test"),
    ("X_USER_EMAIL", "spoofed-8@evil.test"),
    ("X-User-", "spoofed-9"),
    ("x-user-roles", "spoofed-10"),
    ("X-USER-ID", "spoofed-11"),
];

/// Send the spoof headers (with the credential, if any, in the middle of them).
fn spoofed_request(gw: &Gateway, path: &str, credential: Option<(&str, String)>) -> Response {
    let mut headers: Vec<(&str, &str)> = SPOOF[..6].to_vec();
    let cred;
    if let Some((name, value)) = credential {
        cred = value;
        headers.push((name, cred.as_str()));
    }
    headers.extend_from_slice(&SPOOF[6..]);
    gw.get(path, &headers)
}

#[track_caller]
fn assert_no_spoof(seen: &Seen, identity: Option<(&str, Option<&str>)>) {
    assert_identity(seen, identity);
    for (n, v) in &seen.headers {
        assert!(
            !v.contains("spoofed"),
            "a spoofed value reached the upstream as {n}: {v}"
        );
    }
}

#[test]
fn spoofed_user_headers_never_reach_upstream_on_public_route() {
    let gw = hs_gateway();
    let sub = new_sub();
    for cred in [
        None,
        Some(("Authorization", format!("Bearer {}", token_for(&sub)))),
    ] {
        for path in ["/public/x", "/api/health", "/api/anything"] {
            let r = spoofed_request(&gw, path, cred.clone());
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_no_spoof(&r.seen(), None);
        }
    }
}

#[test]
fn spoofed_user_headers_never_reach_upstream_on_optional_route() {
    let gw = hs_gateway();
    let r = spoofed_request(&gw, "/opt/x", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_spoof(&r.seen(), None);

    let sub = new_sub();
    let c = claims(&sub);
    let email = email_of(&c);
    for cred in [
        ("Authorization", format!("Bearer {}", hs256(&c))),
        ("Cookie", format!("pc_tok={}", hs256(&c))),
    ] {
        let r = spoofed_request(&gw, "/opt/x", Some(cred));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_no_spoof(&r.seen(), Some((&sub, Some(&email))));
    }
}

#[test]
fn spoofed_user_headers_never_reach_upstream_on_required_route() {
    let gw = hs_gateway();
    let r = spoofed_request(&gw, "/req/x", None);
    assert_401(&r, "missing_token", false);
    gw.up().assert_not_called();

    let sub = new_sub();
    let c = claims(&sub);
    let email = email_of(&c);
    for cred in [
        ("Authorization", format!("Bearer {}", hs256(&c))),
        ("Cookie", format!("pc_tok={}", hs256(&c))),
    ] {
        let r = spoofed_request(&gw, "/req/x", Some(cred));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_no_spoof(&r.seen(), Some((&sub, Some(&email))));
    }
    // without an email claim, a spoofed X-User-Email must not survive either
    let c = claims_with(&sub, |m| {
        m.remove("email");
    });
    let r = spoofed_request(
        &gw,
        "/req/x",
        Some(("Authorization", format!("Bearer {}", hs256(&c)))),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_spoof(&r.seen(), Some((&sub, None)));
}

#[test]
fn spoofed_user_headers_never_reach_upstream_on_owner_route() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let path = format!("/api/{sub}/tasks/x");
    let r = spoofed_request(&gw, &path, None);
    assert_401(&r, "missing_token", false);
    let r = spoofed_request(
        &gw,
        &path,
        Some(("Authorization", format!("Bearer {}", hs256(&c)))),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_spoof(&r.seen(), Some((&sub, Some(&email_of(&c)))));
}

#[test]
fn spoofed_user_headers_never_reach_upstream_on_forward_token_route() {
    let gw = hs_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let r = spoofed_request(
        &gw,
        "/fwd/x",
        Some(("Authorization", format!("Bearer {}", hs256(&c)))),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_no_spoof(&r.seen(), Some((&sub, Some(&email_of(&c)))));
}

#[test]
fn spoofed_headers_alone_do_not_authenticate() {
    let gw = hs_gateway();
    let sub = new_sub();
    let r = gw.get(
        &format!("/api/{sub}/tasks/x"),
        &[("X-User-Id", &sub), ("X-User-Email", "me@x.test")],
    );
    assert_401(&r, "missing_token", false);
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// X-Request-Id
// ---------------------------------------------------------------------------------------------

#[test]
fn sane_request_id_is_passed_through_and_echoed() {
    let gw = hs_gateway();
    let sane_128 = "a".repeat(128);
    for id in [
        "Req-1_a.b:c/d+e=f",
        "x",
        sane_128.as_str(),
        "0123456789ABCDEFabcdef",
    ] {
        let r = gw.get("/public/x", &[("X-Request-Id", id)]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.request_id(),
            Some(id),
            "response echoes the client's sane id"
        );
        assert_eq!(
            r.seen().all("x-request-id"),
            vec![id.to_string()],
            "upstream gets exactly that id"
        );
    }
}

#[test]
fn insane_request_id_is_replaced_by_a_generated_one() {
    let gw = hs_gateway();
    let long = "a".repeat(129);
    for id in [
        long.as_str(),
        "has space",
        "semi;colon",
        "<script>",
        "quote\"d",
        "comma,sep",
        "star*",
        "caf\u{e9}",
        "",
    ] {
        let r = gw.get("/public/x", &[("X-Request-Id", id)]);
        assert_eq!(r.status, 200, "{id:?}: {}", r.text());
        let echoed = r.request_id().expect("x-request-id").to_string();
        assert_ne!(echoed, id, "insane id {id:?} must be replaced");
        assert!(
            is_generated_request_id(&echoed),
            "generated id is a UUID: {echoed:?}"
        );
        assert_eq!(
            r.seen().all("x-request-id"),
            vec![echoed],
            "upstream gets the generated id"
        );
    }
}

#[test]
fn absent_request_id_is_generated_and_reaches_upstream() {
    let gw = hs_gateway();
    let r1 = gw.get("/public/x", &[]);
    let r2 = gw.get("/public/x", &[]);
    let id1 = r1.request_id().expect("x-request-id").to_string();
    let id2 = r2.request_id().expect("x-request-id").to_string();
    assert!(is_generated_request_id(&id1), "{id1}");
    assert_ne!(id1, id2, "each request gets its own id");
    assert_eq!(r1.seen().all("x-request-id"), vec![id1]);
}

/// (path, headers, expected status)
type Case<'a> = (String, Vec<(&'a str, String)>, u16);

#[test]
fn request_id_is_on_gateway_made_responses() {
    let gw = hs_gateway();
    let other = new_sub();
    let t = token_for(&new_sub());
    let cases: Vec<Case> = vec![
        ("/req/x".into(), vec![], 401),
        (
            "/req/x".into(),
            vec![("Authorization", "Bearer junk".into())],
            401,
        ),
        ("/nowhere".into(), vec![], 404),
        ("/public/%2F".into(), vec![], 400),
        (
            format!("/api/{other}/tasks/x"),
            vec![("Authorization", format!("Bearer {t}"))],
            403,
        ),
    ];
    for (path, headers, status) in &cases {
        let mut h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = gw.get(path, &h);
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        let id = r
            .request_id()
            .unwrap_or_else(|| panic!("{path}: no x-request-id on {status}"));
        assert!(is_generated_request_id(id), "{path}: generated id {id:?}");
        h.push(("X-Request-Id", "trace-42"));
        let r = gw.get(path, &h);
        assert_eq!(r.status, *status);
        assert_eq!(
            r.request_id(),
            Some("trace-42"),
            "{path}: sane id echoed on {status}"
        );
    }
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------------

#[test]
fn most_specific_route_wins() {
    let tasks = Upstream::spawn();
    let catchall = Upstream::spawn();
    let health = Upstream::spawn();
    let cfg = r#"
[server]
listen = "{LISTEN}"
admin_listen = "{ADMIN}"

[store]
url = "sqlite://{DIR}/p.db"

[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"

[[upstream]]
name = "tasks"
addrs = ["{TASKS}"]

[[upstream]]
name = "catchall"
addrs = ["{CATCHALL}"]

[[upstream]]
name = "health"
addrs = ["{HEALTH}"]

[[route]]
path = "/api/{*rest}"
upstream = "catchall"
auth = "public"

[[route]]
path = "/api/health"
upstream = "health"
auth = "public"

[[route]]
path = "/api/{user_id}/tasks/{*rest}"
upstream = "tasks"
auth = "required"
owner = "user_id"
"#;
    let gw = Gateway::start_with(
        cfg,
        &[],
        &[
            ("TASKS", tasks.addr.to_string()),
            ("CATCHALL", catchall.addr.to_string()),
            ("HEALTH", health.addr.to_string()),
        ],
    );
    let r = gw.get("/api/health", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        health.proxied_count(),
        1,
        "static /api/health beats /api/{{*rest}}"
    );
    assert_eq!(catchall.proxied_count(), 0);

    let r = gw.get("/api/something/else", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(catchall.proxied_count(), 1);

    let sub = new_sub();
    let r = gw.get(&format!("/api/{sub}/tasks/x"), &[]);
    assert_401(&r, "missing_token", false);
    assert_eq!(
        catchall.proxied_count(),
        1,
        "the public catch-all must not take a required path"
    );
    tasks.assert_not_called();

    let r = bearer(&gw, &format!("/api/{sub}/tasks/x"), &token_for(&sub));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tasks.proxied_count(), 1);
    assert_eq!(catchall.proxied_count(), 1);
    assert_eq!(health.proxied_count(), 1);
}

#[test]
fn unmatched_path_is_404_not_found_and_not_proxied() {
    let gw = hs_gateway();
    for path in [
        "/nothing/here",
        "/",
        "/publicx/y",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let r = gw.get(path, &[]);
        assert_problem(&r, 404, "not_found");
    }
    gw.up().assert_not_called();
}

#[test]
fn route_matching_is_case_sensitive() {
    let gw = hs_gateway();
    let sub = new_sub();
    for path in [
        "/PUBLIC/x".to_string(),
        "/Public/x".to_string(),
        format!("/API/{sub}/tasks/x"),
    ] {
        let r = gw.get(&path, &[]);
        assert_problem(&r, 404, "not_found");
    }
    // /api/{user_id}/TASKS/x does not match the tasks route: falls to the public /api catch-all
    let r = gw.get(&format!("/api/{sub}/TASKS/x"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen().path,
        format!("/api/{sub}/TASKS/x"),
        "case is preserved"
    );
}

// ---------------------------------------------------------------------------------------------
// path spellings
// ---------------------------------------------------------------------------------------------

/// Without a token: 401 and never proxied. With the owner's token: proxied as `expected`.
#[track_caller]
fn assert_protected(gw: &Gateway, raw_path: &str, sub: &str, expected: &str) {
    let before = gw.up().proxied_count();
    let r = gw.raw(&request_bytes("GET", raw_path, &[], None));
    assert_401(&r, "missing_token", false);
    assert_eq!(
        gw.up().proxied_count(),
        before,
        "{raw_path} reached the upstream unauthenticated"
    );
    let r = gw.raw(&request_bytes(
        "GET",
        raw_path,
        &[("Authorization", &format!("Bearer {}", token_for(sub)))],
        None,
    ));
    assert_eq!(r.status, 200, "{raw_path} with a token: {}", r.text());
    let seen = r.seen();
    assert_eq!(
        seen.path, expected,
        "{raw_path} must be forwarded canonicalised"
    );
    assert_eq!(seen.all("x-user-id"), vec![sub.to_string()]);
}

#[track_caller]
fn assert_bad_request(gw: &Gateway, raw_path: &str) {
    let before = gw.up().proxied_count();
    let r = gw.raw(&request_bytes("GET", raw_path, &[], None));
    assert_eq!(
        r.status,
        400,
        "{raw_path:?} must be 400, got {}: {}",
        r.status,
        r.text()
    );
    assert_problem(&r, 400, "bad_request");
    assert_eq!(
        gw.up().proxied_count(),
        before,
        "{raw_path:?} must not be proxied"
    );
}

#[track_caller]
fn assert_forwarded_as(gw: &Gateway, raw_path: &str, expected: &str) {
    let r = gw.raw(&request_bytes("GET", raw_path, &[], None));
    assert_eq!(r.status, 200, "{raw_path}: {}", r.text());
    assert_eq!(r.seen().path, expected, "{raw_path}");
}

#[test]
fn dotdot_out_of_public_into_required_route_needs_a_token() {
    let gw = hs_gateway();
    let sub = new_sub();
    let want = format!("/api/{sub}/tasks/x");
    assert_protected(&gw, &format!("/public/../api/{sub}/tasks/x"), &sub, &want);
    assert_protected(
        &gw,
        &format!("/public/a/b/../../../api/{sub}/tasks/x"),
        &sub,
        &want,
    );
    assert_protected(
        &gw,
        &format!("/public/../api/{sub}/tasks/x?q=1"),
        &sub,
        &format!("{want}?q=1"),
    );
}

#[test]
fn encoded_dotdot_variants_are_normalised_before_routing() {
    let gw = hs_gateway();
    let sub = new_sub();
    let want = format!("/api/{sub}/tasks/x");
    for dots in ["%2e%2e", "%2E%2E", ".%2e", "%2e.", ".%2E"] {
        assert_protected(
            &gw,
            &format!("/public/{dots}/api/{sub}/tasks/x"),
            &sub,
            &want,
        );
    }
}

#[test]
fn dotdot_inside_a_public_catchall_cannot_hide_a_required_route() {
    let gw = hs_gateway();
    let sub = new_sub();
    let want = format!("/api/{sub}/tasks/x");
    assert_protected(&gw, &format!("/api/health/../{sub}/tasks/x"), &sub, &want);
    assert_protected(&gw, &format!("/api/zzz/%2e%2e/{sub}/tasks/x"), &sub, &want);
    assert_protected(
        &gw,
        &format!("/api/{sub}/tasks/x/y/%2e%2e/%2e%2e/x"),
        &sub,
        &want,
    );
    assert_protected(&gw, &format!("/api/{sub}/./tasks/./x"), &sub, &want);
}

#[test]
fn dotdot_within_route_resolves_to_the_canonical_path() {
    let gw = hs_gateway();
    let sub = new_sub();
    // /api/<sub>/tasks/a/../b -> /api/<sub>/tasks/b: the owner route, forwarded canonicalised
    let r = gw.get(
        &format!("/api/{sub}/tasks/a/%2e%2e/b"),
        &[("Authorization", &format!("Bearer {}", token_for(&sub)))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().path, format!("/api/{sub}/tasks/b"));
}

#[test]
fn dot_segments_are_removed() {
    let gw = hs_gateway();
    assert_forwarded_as(&gw, "/public/./a/%2e/b", "/public/a/b");
    assert_forwarded_as(&gw, "/public/a/./b", "/public/a/b");
    assert_forwarded_as(&gw, "/public/a/../b?x=1", "/public/b?x=1");
}

#[test]
fn dotdot_above_the_root_is_400() {
    let gw = hs_gateway();
    for p in [
        "/..",
        "/../public/x",
        "/public/../..",
        "/public/../../etc/passwd",
        "/%2e%2e/public/x",
        "/public/x/../../../y",
    ] {
        assert_bad_request(&gw, p);
    }
}

#[test]
fn encoded_slash_backslash_and_nul_are_400() {
    let gw = hs_gateway();
    let sub = new_sub();
    for p in [
        "/public/a%2Fb".to_string(),
        "/public/a%2fb".to_string(),
        format!("/public/..%2Fapi%2F{sub}%2Ftasks%2Fx"),
        format!("/api/{sub}/tasks/x%2F..%2F..%2Fy"),
        "/public/a%5Cb".to_string(),
        "/public/a%5cb".to_string(),
        "/public/..%5C..%5Capi".to_string(),
        "/public/a%00b".to_string(),
        "/public/a%00".to_string(),
    ] {
        assert_bad_request(&gw, &p);
    }
}

#[test]
fn raw_backslash_is_400() {
    let gw = hs_gateway();
    let sub = new_sub();
    assert_bad_request(&gw, "/public/a\\b");
    assert_bad_request(&gw, &format!("/public\\..\\api\\{sub}\\tasks\\x"));
    assert_bad_request(&gw, &format!("/public/..\\api/{sub}/tasks/x"));
}

#[test]
fn double_encoding_is_400() {
    let gw = hs_gateway();
    let sub = new_sub();
    for p in [
        format!("/public/%252e%252e/api/{sub}/tasks/x"),
        "/public/a%2541".to_string(),
        "/public/%252F".to_string(),
    ] {
        assert_bad_request(&gw, &p);
    }
}

#[test]
fn malformed_escapes_are_400() {
    let gw = hs_gateway();
    for p in [
        "/public/a%",
        "/public/a%4",
        "/public/a%zz",
        "/public/%g1",
        "/public/%4/x",
        "/public/a%%41",
    ] {
        assert_bad_request(&gw, p);
    }
}

#[test]
fn dot_segments_with_parameters_are_400() {
    let gw = hs_gateway();
    let sub = new_sub();
    for p in [
        format!("/public/..;/api/{sub}/tasks/x"),
        format!("/public/..;jsessionid=1/api/{sub}/tasks/x"),
        "/public/.;x/y".to_string(),
        format!("/public/%2e%2e;/api/{sub}/tasks/x"),
    ] {
        assert_bad_request(&gw, &p);
    }
}

#[test]
fn empty_segments_are_collapsed() {
    let gw = hs_gateway();
    let sub = new_sub();
    assert_protected(
        &gw,
        &format!("//api//{sub}//tasks/x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
    assert_protected(
        &gw,
        &format!("/api/{sub}///tasks//x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
    assert_forwarded_as(&gw, "/public//x///y", "/public/x/y");
}

#[test]
fn unreserved_escapes_are_decoded() {
    let gw = hs_gateway();
    let sub = new_sub();
    assert_protected(
        &gw,
        &format!("/%61pi/{sub}/tasks/x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
    assert_protected(
        &gw,
        &format!("/api/{sub}/%74asks/x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
    assert_forwarded_as(
        &gw,
        "/public/%7Euser%2D%5f%2Ex%41%7a%30",
        "/public/~user-_.xAz0",
    );
    assert_forwarded_as(&gw, "/%70ublic/x", "/public/x");
}

#[test]
fn other_escapes_are_kept_with_uppercase_hex() {
    let gw = hs_gateway();
    assert_forwarded_as(&gw, "/public/caf%c3%a9", "/public/caf%C3%A9");
    assert_forwarded_as(&gw, "/public/a%20b", "/public/a%20b");
    assert_forwarded_as(&gw, "/public/a%3fb", "/public/a%3Fb");
    assert_forwarded_as(&gw, "/public/a%23b%3b", "/public/a%23b%3B");
    assert_forwarded_as(&gw, "/public/%2b%40", "/public/%2B%40");
}

#[test]
fn query_string_is_forwarded_as_sent() {
    let gw = hs_gateway();
    assert_forwarded_as(
        &gw,
        "/public/x?a=%2F&b=/../y&c=%41&d",
        "/public/x?a=%2F&b=/../y&c=%41&d",
    );
    assert_forwarded_as(&gw, "/public/./x?q=%2e%2e", "/public/x?q=%2e%2e");
}

#[test]
fn absolute_form_target_uses_its_path() {
    let gw = hs_gateway();
    let sub = new_sub();
    assert_forwarded_as(&gw, "http://localhost/public/x?q=1", "/public/x?q=1");
    assert_protected(
        &gw,
        &format!("http://localhost/api/{sub}/tasks/x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
    assert_protected(
        &gw,
        &format!("http://localhost/public/../api/{sub}/tasks/x"),
        &sub,
        &format!("/api/{sub}/tasks/x"),
    );
}

#[test]
fn target_without_leading_slash_is_400() {
    let gw = hs_gateway();
    let r = gw.raw(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_problem(&r, 400, "bad_request");
    assert_bad_request(&gw, "public/x");
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// upstreams
// ---------------------------------------------------------------------------------------------

#[test]
fn method_and_body_reach_the_upstream() {
    let gw = hs_gateway();
    let sub = new_sub();
    let body = br#"{"title":"buy milk"}"#;
    let r = gw.raw(&request_bytes(
        "POST",
        &format!("/api/{sub}/tasks/new"),
        &[
            ("Authorization", &format!("Bearer {}", token_for(&sub))),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, String::from_utf8_lossy(body));
    assert_eq!(
        seen.all("content-type"),
        vec!["application/json".to_string()]
    );
}

fn upstream_config(addrs: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{LISTEN}}"
admin_listen = "{{ADMIN}}"

[store]
url = "sqlite://{{DIR}}/p.db"
auto_migrate = false

[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"

[[upstream]]
name = "pool"
addrs = [{addrs}]
{extra}

[[route]]
path = "/p/{{*rest}}"
upstream = "pool"
auth = "public"
"#
    )
}

#[test]
fn several_addrs_are_load_balanced() {
    let a = Upstream::spawn();
    let b = Upstream::spawn();
    let gw = Gateway::start(
        &upstream_config(&format!("\"{}\", \"{}\"", a.addr, b.addr), ""),
        &[],
    );
    for i in 0..24 {
        let r = gw.get(&format!("/p/{i}"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (na, nb) = (a.proxied_count(), b.proxied_count());
    assert_eq!(na + nb, 24);
    assert!(
        na > 0 && nb > 0,
        "both addrs must receive requests: {na} / {nb}"
    );
}

#[test]
fn dead_upstream_is_502_bad_gateway() {
    let dead = dead_addr();
    let gw = Gateway::start(&upstream_config(&format!("\"{dead}\""), ""), &[]);
    let t0 = Instant::now();
    let r = gw.get("/p/x", &[("X-Request-Id", "dead-1")]);
    assert_problem(&r, 502, "bad_gateway");
    assert_eq!(r.request_id(), Some("dead-1"));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "502 took {:?}",
        t0.elapsed()
    );
}

#[test]
fn hanging_upstream_is_504_gateway_timeout() {
    let hang = spawn_hanging_upstream();
    let gw = Gateway::start(
        &upstream_config(&format!("\"{hang}\""), "read_timeout_ms = 300"),
        &[],
    );
    let t0 = Instant::now();
    let r = gw.get("/p/x", &[]);
    let took = t0.elapsed();
    assert_problem(&r, 504, "gateway_timeout");
    assert!(
        took < Duration::from_secs(10),
        "504 took {took:?} with read_timeout_ms = 300"
    );
}

#[test]
fn unhealthy_addr_is_taken_out_of_rotation() {
    let live = Upstream::spawn();
    let dead = dead_addr();
    let gw = Gateway::start(
        &upstream_config(
            &format!("\"{}\", \"{dead}\"", live.addr),
            "health_check_interval_ms = 100",
        ),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut streak = 0;
    let mut last = String::new();
    while streak < 12 {
        assert!(
            Instant::now() < deadline,
            "never got 12 consecutive 200s with a dead addr in the pool; last: {last}"
        );
        let r = gw.get("/p/x", &[]);
        if r.status == 200 {
            streak += 1;
        } else {
            streak = 0;
            last = format!("{} {}", r.status, r.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// asymmetric keys and JWKS
// ---------------------------------------------------------------------------------------------

fn ed_gateway() -> Gateway {
    Gateway::start(&config(ED_TOKENS, "", ""), &[])
}

#[test]
fn eddsa_gateway_accepts_current_key_token() {
    let gw = ed_gateway();
    let sub = new_sub();
    let c = claims(&sub);
    let seen = assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &c),
        &sub,
    );
    assert_identity(&seen, Some((&sub, Some(&email_of(&c)))));
}

#[test]
fn eddsa_gateway_accepts_previous_key_for_rotation() {
    let gw = ed_gateway();
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519-old.pem",
            Some("k0"),
            &claims(&sub),
        ),
        &sub,
    );
}

#[test]
fn eddsa_gateway_tries_every_key_for_a_token_without_kid() {
    let gw = ed_gateway();
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", None, &claims(&sub)),
        &sub,
    );
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519-old.pem", None, &claims(&sub)),
        &sub,
    );
}

#[test]
fn eddsa_gateway_rejects_hs256_tokens_and_alg_confusion() {
    let gw = Gateway::start(&config(ED_TOKENS, "", ""), &[]);
    let c = claims(&new_sub());
    // plain HS256 with the (unrelated) test secret
    assert_rejected(&gw, &hs256(&c), "invalid_token");
    // HS256 keyed with the public key material, under the asymmetric kid
    let pub_pem = read_key("ed25519.pub.pem");
    assert_rejected(&gw, &hs256_with(&pub_pem, &c, Some("k1")), "invalid_token");
    assert_rejected(&gw, &hs256_with(&pub_pem, &c, None), "invalid_token");
    assert_rejected(
        &gw,
        &hs256_with(&ed25519_raw_public("ed25519.pub.pem"), &c, Some("k1")),
        "invalid_token",
    );
    let old_pem = read_key("ed25519-old.pub.pem");
    assert_rejected(&gw, &hs256_with(&old_pem, &c, Some("k0")), "invalid_token");
}

#[test]
fn eddsa_gateway_rejects_unknown_kid() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("zz"), &c),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_rejects_a_key_under_the_wrong_kid() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519-old.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k0"), &c),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_rejects_other_algorithms_and_none() {
    let gw = ed_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", Some("k1"), &c),
        "invalid_token",
    );
    assert_rejected(&gw, &alg_none(&c), "invalid_token");
    let h = b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    assert_rejected(
        &gw,
        &format!("{h}.{}.", b64url(c.to_string().as_bytes())),
        "invalid_token",
    );
}

#[test]
fn eddsa_gateway_enforces_claims_too() {
    let gw = ed_gateway();
    let expired = claims_with(&new_sub(), |m| {
        m.insert("exp".into(), json!(now() - 120));
    });
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &expired),
        "token_expired",
    );
    let wrong_aud = claims_with(&new_sub(), |m| {
        m.insert("aud".into(), json!("elsewhere"));
    });
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("k1"), &wrong_aud),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &tamper_signature(&sign_pem(
            Algorithm::EdDSA,
            "ed25519.pem",
            Some("k1"),
            &claims(&new_sub()),
        )),
        "invalid_token",
    );
}

#[test]
fn es256_gateway_accepts_its_tokens_and_rejects_confusion() {
    let gw = Gateway::start(&config(ES_TOKENS, "", ""), &[]);
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::ES256, "p256.pem", Some("ec1"), &claims(&sub)),
        &sub,
    );
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(&read_key("p256.pub.pem"), &c, Some("ec1")),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::EdDSA, "ed25519.pem", Some("ec1"), &c),
        "invalid_token",
    );
    assert_rejected(&gw, &hs256(&c), "invalid_token");
}

#[test]
fn rs256_gateway_accepts_its_tokens_and_rejects_confusion() {
    let gw = Gateway::start(&config(RS_TOKENS, "", ""), &[]);
    let sub = new_sub();
    assert_accepted(
        &gw,
        &sign_pem(Algorithm::RS256, "rsa.pem", Some("rsa1"), &claims(&sub)),
        &sub,
    );
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(&read_key("rsa.pub.pem"), &c, Some("rsa1")),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &hs256_with(&read_key("rsa.pub.pem"), &c, None),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::PS256, "rsa.pem", Some("rsa1"), &c),
        "invalid_token",
    );
    assert_rejected(
        &gw,
        &sign_pem(Algorithm::RS512, "rsa.pem", Some("rsa1"), &c),
        "invalid_token",
    );
}

fn jwks(gw: &Gateway) -> Value {
    let r = gw.get("/.well-known/jwks.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.contains("json"), "JWKS content-type: {ct:?}");
    assert!(r.request_id().is_some());
    let v = r.json();
    for k in v["keys"].as_array().expect("keys array") {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                k.get(private).is_none(),
                "JWKS must not publish private field {private}: {k}"
            );
        }
    }
    v
}

/// The published key verifies a token signed with the fixture private key.
#[track_caller]
fn jwk_verifies(jwk: &Value, alg: Algorithm, token: &str) {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).expect("parse JWK");
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("JWK to key");
    let mut v = jsonwebtoken::Validation::new(alg);
    v.set_audience(&[AUDIENCE]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(token, &key, &v).expect("the published key verifies our token");
}

#[test]
fn jwks_lists_current_and_previous_ed25519_keys() {
    let gw = ed_gateway();
    let v = jwks(&gw);
    let keys = v["keys"].as_array().unwrap();
    let find = |kid: &str| {
        keys.iter()
            .find(|k| k["kid"] == kid)
            .unwrap_or_else(|| panic!("kid {kid} not in JWKS: {v}"))
    };
    for (kid, pub_pem) in [("k1", "ed25519.pub.pem"), ("k0", "ed25519-old.pub.pem")] {
        let k = find(kid);
        assert_eq!(k["kty"], "OKP", "{k}");
        assert_eq!(k["crv"], "Ed25519", "{k}");
        assert_eq!(
            k["x"],
            b64url(&ed25519_raw_public(pub_pem)),
            "{kid}: x is the raw public key"
        );
    }
    jwk_verifies(
        find("k1"),
        Algorithm::EdDSA,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519.pem",
            Some("k1"),
            &claims(&new_sub()),
        ),
    );
    jwk_verifies(
        find("k0"),
        Algorithm::EdDSA,
        &sign_pem(
            Algorithm::EdDSA,
            "ed25519-old.pem",
            Some("k0"),
            &claims(&new_sub()),
        ),
    );
    assert_eq!(
        keys.len(),
        2,
        "exactly the current and the previous key: {v}"
    );
}

#[test]
fn jwks_publishes_ec_and_rsa_keys() {
    let gw = Gateway::start(&config(ES_TOKENS, "", ""), &[]);
    let v = jwks(&gw);
    let k = &v["keys"][0];
    assert_eq!(k["kid"], "ec1");
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    jwk_verifies(
        k,
        Algorithm::ES256,
        &sign_pem(
            Algorithm::ES256,
            "p256.pem",
            Some("ec1"),
            &claims(&new_sub()),
        ),
    );
    drop(gw);

    let gw = Gateway::start(&config(RS_TOKENS, "", ""), &[]);
    let v = jwks(&gw);
    let k = &v["keys"][0];
    assert_eq!(k["kid"], "rsa1");
    assert_eq!(k["kty"], "RSA");
    assert!(k["n"].is_string() && k["e"].is_string(), "{k}");
    jwk_verifies(
        k,
        Algorithm::RS256,
        &sign_pem(
            Algorithm::RS256,
            "rsa.pem",
            Some("rsa1"),
            &claims(&new_sub()),
        ),
    );
}

#[test]
fn jwks_is_404_on_an_hs256_gateway() {
    let gw = hs_gateway();
    let r = gw.get("/.well-known/jwks.json", &[]);
    assert_problem(&r, 404, "not_found");
    assert!(!r.text().contains(SECRET), "never the secret");
    gw.up().assert_not_called();
}

// ---------------------------------------------------------------------------------------------
// admin listener and process
// ---------------------------------------------------------------------------------------------

#[test]
fn admin_healthz_is_200() {
    let gw = hs_gateway();
    let r = get(gw.admin, "/healthz", &[]);
    assert_eq!(r.status, 200);
}

#[test]
fn admin_readyz_is_200_with_a_reachable_store() {
    let gw = hs_gateway();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(gw.admin, "/readyz", &[]);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never 200 with a local SQLite store: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unreachable_store_is_not_a_config_error_and_the_edge_still_serves() {
    let dead: SocketAddr = dead_addr();
    let cfg = config(HS_TOKENS, "", "").replace(
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

    let quiet = Gateway::start(&config(HS_TOKENS, "", ""), &[("RUST_LOG", "warn")]);
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
    let gw = Gateway::start(&config(HS_TOKENS, "", ""), &[("RUST_LOG", "debug")]);
    let r = bearer(&gw, &format!("/fwd/{sub}"), &token);
    assert_eq!(r.status, 200);
    assert!(
        r.seen().one("authorization").is_some(),
        "forward_token kept the credential"
    );
    let dead = config(HS_TOKENS, "", "").replace("{UPSTREAM}", &dead_addr().to_string());
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

// ---------------------------------------------------------------------------------------------
// more credential and framing edge cases
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_self_check_spoof_headers_reach_an_unguarded_upstream() {
    // proves the spoofing assertions are not vacuous: sent straight to the recording upstream
    // (no gateway), every spoof header is seen and recognised as an identity header
    let up = Upstream::spawn();
    let r = get(up.addr, "/direct", SPOOF);
    let seen = r.seen();
    assert_eq!(
        seen.identity_headers().len(),
        SPOOF.len(),
        "{:?}",
        seen.headers
    );
}

#[test]
fn cookies_whose_names_merely_resemble_the_auth_cookie_are_not_credentials() {
    let gw = hs_gateway();
    let t = token_for(&new_sub());
    // neither counts as the auth cookie: no token, and not ambiguous
    let r = cookie(
        &gw,
        "/req/x",
        &format!("pc_tok_old={t}; xpc_tok={t}; PC_TOK={t}"),
    );
    assert_401(&r, "missing_token", false);
    // next to the real one they pass to the upstream untouched
    let sub = new_sub();
    let real = token_for(&sub);
    let r = cookie(
        &gw,
        "/req/x",
        &format!("pc_tok_old=1; pc_tok={real}; xpc_tok=2"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_eq!(seen.all("x-user-id"), vec![sub]);
    assert_eq!(
        seen.cookies(),
        vec![
            ("pc_tok_old".to_string(), "1".to_string()),
            ("xpc_tok".to_string(), "2".to_string())
        ]
    );
}

#[test]
fn body_of_a_rejected_request_is_never_read_as_another_request() {
    use std::io::{Read, Write};
    let gw = hs_gateway();
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let req = format!(
        "POST /req/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    // read whatever comes back until close or time-out
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 401"), "first response: {text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {text}"
    );
    assert!(
        gw.up()
            .all_requests()
            .iter()
            .all(|r| !r.path.contains("smuggled")),
        "the body of a rejected request reached the upstream as a request"
    );
}

#[test]
fn repeated_request_id_headers_reach_the_upstream_as_one() {
    let gw = hs_gateway();
    let r = gw.get(
        "/public/x",
        &[("X-Request-Id", "one"), ("X-Request-Id", "two")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echoed = r.request_id().expect("x-request-id").to_string();
    assert_eq!(
        r.headers_all("x-request-id").len(),
        1,
        "one id in the response"
    );
    assert_eq!(
        r.seen().all("x-request-id"),
        vec![echoed],
        "one id upstream, the echoed one"
    );
}

#[test]
fn database_url_overrides_store_url() {
    // store.url points nowhere; DATABASE_URL points at a local SQLite file: ready
    let dead = dead_addr();
    let cfg = config(HS_TOKENS, "", "").replace(
        "sqlite://{DIR}/p.db",
        &format!("postgres://portcullis:portcullis@{dead}/portcullis?sslmode=disable"),
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/override.db", dir.path().display());
    let gw = Gateway::start(&cfg, &[("DATABASE_URL", url.as_str())]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(gw.admin, "/readyz", &[]);
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "DATABASE_URL must override store.url: readyz {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unknown_kid_is_invalid_token_on_an_hs256_gateway_too() {
    let gw = hs_gateway();
    let c = claims(&new_sub());
    assert_rejected(
        &gw,
        &hs256_with(SECRET.as_bytes(), &c, Some("nope")),
        "invalid_token",
    );
}

#[test]
fn optional_route_with_basic_authorization_passes_anonymously_and_forwards_it() {
    let gw = hs_gateway();
    let basic = "Basic dXNlcjpwYXNz";
    let r = gw.get("/opt/x", &[("Authorization", basic), ("Cookie", "a=1")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.seen();
    assert_identity(&seen, None);
    assert_eq!(seen.all("authorization"), vec![basic.to_string()]);
    assert_eq!(seen.cookies(), vec![("a".to_string(), "1".to_string())]);
}
