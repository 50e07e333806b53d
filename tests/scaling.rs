//! The scaled-down simulation `docs/scaling.md` checks its model against: 16 gateway processes
//! (one worker thread each) on one Postgres database, as 16 replicas behind a load balancer.
//! Measured and printed: a sign-out's time to reach the last replica, the Postgres
//! transactions a sign-in storm spread over all of them costs with `rate_limit.scope =
//! "cluster"`, and each replica's resident memory. Asserted: every replica refuses the
//! signed-out token within a second, and the shared limit holds across all 16.

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::db::{Db, Store};
use common::{Gateway, request_bytes};
use serde_json::json;

const REPLICAS: usize = 16;
const PASSWORD: &str = "correct horse battery";

fn config(url: &str, per_email: u32) -> String {
    TestConfig::new()
        .server("threads = 1")
        .server("grace_period_secs = 0")
        .store(url)
        .fast_bcrypt()
        .section(&format!(
            "[rate_limit]\nscope = \"cluster\"\nper_ip_per_minute = 1000000\n\
             failed_signins_per_email_per_minute = {per_email}\n"
        ))
        .app(&[])
        .owner_route()
        .build()
}

fn post(g: &Gateway, path: &str, body: &serde_json::Value, auth: Option<&str>) -> common::Response {
    let body = body.to_string();
    let mut headers = vec![("Content-Type", "application/json".to_owned())];
    if let Some(t) = auth {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    g.raw(&request_bytes("POST", path, &h, Some(body.as_bytes())))
}

/// One number from `psql` on `url`.
fn sql_number(url: &str, sql: &str) -> i64 {
    let out = Command::new("psql")
        .args([url, "-tAc", sql])
        .output()
        .expect("psql (postgresql-client)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sixteen_replicas_on_one_postgres_share_revocations_and_one_sign_in_limit() {
    let db = Db::new(Store::Postgres);
    let per_email = 20;
    let gateways: Vec<Gateway> = (0..REPLICAS)
        .map(|_| Gateway::start(&config(&db.url, per_email), &[]))
        .collect();
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let creds = json!({"email": email, "password": PASSWORD});
    let reg = post(&gateways[0], "/api/v1/auth/register", &creds, None);
    assert_eq!(reg.status, 201, "{}", reg.text());
    let token = reg.json()["token"].as_str().unwrap().to_owned();
    let id = reg.json()["user"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/{id}/tasks/1");
    let bearer = format!("Bearer {token}");
    for g in &gateways {
        assert_eq!(g.get(&path, &[("Authorization", &bearer)]).status, 200);
    }

    // A sign-out on one replica, watched on all 16 at once.
    let out = post(
        &gateways[0],
        "/api/v1/auth/signout",
        &json!({}),
        Some(&token),
    );
    assert_eq!(out.status, 204, "{}", out.text());
    let signed_out = Instant::now();
    let reached: Vec<Duration> = thread::scope(|s| {
        let watchers: Vec<_> = gateways
            .iter()
            .map(|g| {
                let (path, bearer) = (&path, &bearer);
                s.spawn(move || {
                    loop {
                        if g.get(path, &[("Authorization", bearer)]).status == 401 {
                            return signed_out.elapsed();
                        }
                        assert!(
                            signed_out.elapsed() < Duration::from_secs(1),
                            "a replica still accepts the token"
                        );
                        thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        watchers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let last = reached.iter().max().unwrap();

    // A storm of failed sign-ins for one email spread over every replica: the shared limit
    // lets `per_email` through in all, and the database's transactions are counted.
    let commits = || {
        sql_number(
            &db.url,
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
    };
    let before = commits();
    let started = Instant::now();
    let statuses: Vec<u16> = thread::scope(|s| {
        let storm: Vec<_> = gateways
            .iter()
            .map(|g| {
                let body = json!({"email": email, "password": "wrong-password-123"});
                s.spawn(move || {
                    (0..4)
                        .map(|_| post(g, "/api/v1/auth/signin", &body, None).status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        storm.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    let storm_took = started.elapsed();
    let transactions = commits() - before;
    let refused_by_limit = statuses.iter().filter(|s| **s == 429).count();
    let wrong_password = statuses.iter().filter(|s| **s == 401).count();
    let rss: Vec<u64> = gateways.iter().map(|g| rss_kib(g.pid())).collect();
    eprintln!(
        "16 replicas: sign-out reached the last in {last:?} (median {:?}); storm of {} failed sign-ins \
         over {:?}: {wrong_password} answered 401, {refused_by_limit} 429, {transactions} Postgres \
         transactions ({:.1} per sign-in); RSS per replica {} to {} KiB",
        {
            let mut r = reached.clone();
            r.sort();
            r[r.len() / 2]
        },
        statuses.len(),
        storm_took,
        f64::from(u32::try_from(transactions).unwrap_or(u32::MAX))
            / f64::from(u32::try_from(statuses.len()).unwrap_or(u32::MAX)),
        rss.iter().min().unwrap(),
        rss.iter().max().unwrap(),
    );
    // Each 401 was counted before the next check; concurrent checks may let a few through
    // before the count is seen, never a replica's own `per_email` each.
    assert!(
        wrong_password <= per_email as usize + REPLICAS,
        "the shared limit leaked: {wrong_password} wrong-password answers for a limit of {per_email}"
    );
    assert!(refused_by_limit >= statuses.len() - per_email as usize - REPLICAS);
    assert!(*last < Duration::from_secs(1));
}
