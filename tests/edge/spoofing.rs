//! CONTRACT section 4, identity headers: the client can never set them, on any route.

use super::*;

/// The token as a Bearer header and as the auth cookie.
fn both_ways(token: &str) -> [(&'static str, String); 2] {
    [
        ("Authorization", format!("Bearer {token}")),
        ("Cookie", format!("pc_tok={token}")),
    ]
}

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
    for cred in both_ways(&hs256(&c)) {
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
    for cred in both_ways(&hs256(&c)) {
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
