//! CONTRACT section 4, the credential: `Authorization: Bearer` or the auth cookie, read once,
//! refused when ambiguous, taken away before the upstream unless `forward_token`.

use super::*;

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
    let gw = Gateway::start(&config(cfg::HS256, upstreams, routes), &[]);
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
