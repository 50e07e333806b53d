//! CONTRACT section 2, upstreams: bodies and methods pass, addresses are balanced and health
//! checked, a dead upstream is 502 and a silent one 504.

use super::*;

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
