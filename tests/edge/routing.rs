//! CONTRACT section 2, routes: the most specific pattern wins; no route, no upstream (404).

use super::*;

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
