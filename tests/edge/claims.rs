//! CONTRACT section 10, claim rules per route: `require` and `require_scopes` → 403
//! `insufficient_scope` with the RFC 6750 challenge, never proxied; after the 401s, beside the
//! owner rule, on optional routes only when a token is presented.

use super::*;

/// The edge gateway plus routes with claim rules.
fn rules_gateway() -> Gateway {
    let routes = r#"
[[route]]
path = "/admin/{*rest}"
upstream = "app"
auth = "required"
require = { roles = "admin", org = "acme" }

[[route]]
path = "/tasks/{*rest}"
upstream = "app"
auth = "required"
require_scopes = ["tasks:write", "tasks:read"]

[[route]]
path = "/feed/{*rest}"
upstream = "app"
auth = "optional"
require = { plan = "pro" }

[[route]]
path = "/team/{user_id}/{*rest}"
upstream = "app"
auth = "required"
owner = "user_id"
require = { role = "lead" }
"#;
    Gateway::start(&config(cfg::HS256, "", routes), &[])
}

fn token_with(sub: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    hs256(&claims_with(sub, f))
}

/// 403 `insufficient_scope`, its one challenge, the token not echoed.
#[track_caller]
fn assert_insufficient(r: &Response, token: &str) {
    assert_problem(r, 403, "insufficient_scope");
    assert_eq!(
        r.headers_all("www-authenticate"),
        [r#"Bearer realm="portcullis", error="insufficient_scope""#],
    );
    assert_no_token_echo(r, token);
}

#[test]
fn a_token_missing_a_required_claim_is_403_insufficient_scope_and_never_proxied() {
    let gw = rules_gateway();
    let sub = new_sub();
    for refused in [
        token_for(&sub),
        token_with(&sub, |c| {
            c.insert("roles".into(), json!(["user"]));
            c.insert("org".into(), json!("acme"));
        }),
        // Every listed claim must match, not one of them.
        token_with(&sub, |c| {
            c.insert("roles".into(), json!(["admin"]));
        }),
        token_with(&sub, |c| {
            c.insert("roles".into(), json!("Admin"));
            c.insert("org".into(), json!("acme"));
        }),
        token_with(&sub, |c| {
            c.insert("roles".into(), json!([["admin"]]));
            c.insert("org".into(), json!("acme"));
        }),
    ] {
        let r = bearer(&gw, "/admin/users", &refused);
        assert_insufficient(&r, &refused);
        // The cookie carries the same token to the same answer.
        let r = cookie(&gw, "/admin/users", &format!("pc_tok={refused}"));
        assert_insufficient(&r, &refused);
    }
    gw.up().assert_not_called();
}

#[test]
fn a_claim_equal_to_the_string_or_an_array_holding_it_passes_with_identity() {
    let gw = rules_gateway();
    let sub = new_sub();
    for (roles, org) in [
        (json!("admin"), json!("acme")),
        (json!(["user", "admin"]), json!(["other", "acme"])),
    ] {
        let t = token_with(&sub, |c| {
            c.insert("roles".into(), roles);
            c.insert("org".into(), org);
        });
        let r = bearer(&gw, "/admin/users", &t);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_identity(&r.seen(), Some((&sub, Some(&email_of(&claims(&sub))))));
    }
}

#[test]
fn scopes_are_read_from_scope_or_scp_and_all_are_needed() {
    let gw = rules_gateway();
    let sub = new_sub();
    for granted in [
        json!({"scope": "openid tasks:read tasks:write"}),
        json!({"scp": ["tasks:write", "tasks:read"]}),
        json!({"scope": "tasks:read", "scp": ["tasks:write"]}),
    ] {
        let t = token_with(&sub, |c| c.extend(granted.as_object().unwrap().clone()));
        let r = bearer(&gw, "/tasks/1", &t);
        assert_eq!(r.status, 200, "{granted}: {}", r.text());
    }
    let before = gw.up().proxied_count();
    for refused in [
        json!({"scope": "tasks:read"}),
        json!({"scope": "tasks:read,tasks:write"}),
        json!({"scp": ["tasks:read tasks:write"]}),
        json!({"scopes": "tasks:read tasks:write"}),
    ] {
        let t = token_with(&sub, |c| c.extend(refused.as_object().unwrap().clone()));
        assert_insufficient(&bearer(&gw, "/tasks/1", &t), &t);
    }
    assert_eq!(gw.up().proxied_count(), before, "a refusal was proxied");
}

#[test]
fn token_problems_stay_401_before_any_rule_is_looked_at() {
    let gw = rules_gateway();
    let sub = new_sub();
    let admin = |c: &mut serde_json::Map<String, Value>| {
        c.insert("roles".into(), json!(["admin"]));
        c.insert("org".into(), json!("acme"));
    };
    assert_401(&gw.get("/admin/x", &[]), "missing_token", false);
    let expired = token_with(&sub, |c| {
        admin(c);
        c.insert("exp".into(), json!(now() - 3600));
    });
    assert_401(&bearer(&gw, "/admin/x", &expired), "token_expired", true);
    let forged = hs256_with(
        b"another-secret-another-secret-another-secret",
        &claims_with(&sub, admin),
        None,
    );
    assert_401(&bearer(&gw, "/admin/x", &forged), "invalid_token", true);
    gw.up().assert_not_called();
}

#[test]
fn on_an_optional_route_rules_apply_only_to_a_presented_token() {
    let gw = rules_gateway();
    let sub = new_sub();
    let r = gw.get("/feed/x", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_identity(&r.seen(), None);
    let free = token_for(&sub);
    assert_insufficient(&bearer(&gw, "/feed/x", &free), &free);
    let pro = token_with(&sub, |c| {
        c.insert("plan".into(), json!("pro"));
    });
    let r = bearer(&gw, "/feed/x", &pro);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().one("x-user-id").as_deref(), Some(sub.as_str()));
}

#[test]
fn rules_and_the_owner_rule_both_hold_each_with_its_own_code() {
    let gw = rules_gateway();
    let me = new_sub();
    let lead = token_with(&me, |c| {
        c.insert("role".into(), json!("lead"));
    });
    let member = token_for(&me);
    assert_eq!(bearer(&gw, &format!("/team/{me}/x"), &lead).status, 200);
    assert_insufficient(&bearer(&gw, &format!("/team/{me}/x"), &member), &member);
    let other = new_sub();
    assert_problem(
        &bearer(&gw, &format!("/team/{other}/x"), &lead),
        403,
        "forbidden",
    );
}

#[test]
fn claim_rule_refusals_are_counted_by_route_pattern() {
    let gw = rules_gateway();
    let t = token_for(&new_sub());
    for _ in 0..3 {
        assert_insufficient(&bearer(&gw, "/admin/x", &t), &t);
    }
    assert_insufficient(&bearer(&gw, "/tasks/x", &t), &t);
    // Counted when the request is logged, just after its response went out: wait for the last.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = get(gw.admin, "/metrics", &[]).text();
        if text.contains("portcullis_rejections_total{code=\"insufficient_scope\"} 4")
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let value = |route: &str| {
        let prefix = format!("portcullis_claim_rule_refusals_total{{route=\"{route}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(value("/admin/{*rest}").as_deref(), Some("3"), "{text}");
    assert_eq!(value("/tasks/{*rest}").as_deref(), Some("1"));
    assert_eq!(value("/feed/{*rest}"), None, "no refusal, no series");
    assert!(
        text.contains("portcullis_rejections_total{code=\"insufficient_scope\"} 4"),
        "{text}"
    );
}
