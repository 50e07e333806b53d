//! CONTRACT section 4, route policy: the owner rule (403), optional and public routes.

use super::*;

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
