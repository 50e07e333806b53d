//! CONTRACT section 4 and docs/edge-decisions.md, path spellings: one canonical path for the
//! route table and the upstream, or 400.

use super::*;

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
