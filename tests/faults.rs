//! Faults under traffic, black-box: the database connection cut and restored, an upstream
//! flapping, the embedded store's disk full. The gateway must answer fast and plainly (503,
//! 502, never a 500 or a hang), keep serving what does not depend on the failed part, recover
//! by itself, and lose nothing that was acknowledged. Each test prints its figures.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::db::{Cuttable, Db, Store};
use common::*;
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery";

fn config(store_url: &str, upstream: &str, extra: &str) -> String {
    TestConfig::new()
        .server("grace_period_secs = 0")
        .store(store_url)
        .fast_bcrypt()
        .no_rate_limits()
        .upstream(
            "app",
            &format!("\"{upstream}\""),
            &["connect_timeout_ms = 500", "read_timeout_ms = 3000", extra],
        )
        .owner_route()
        .route("/public/{*rest}", "app", "public", &[])
        .build()
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> Result<Response, String> {
    try_send_raw(
        addr,
        &request_bytes(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        ),
    )
}

fn email() -> String {
    format!("f-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn register(addr: SocketAddr, mail: &str) -> Response {
    post(
        addr,
        "/api/v1/auth/register",
        &json!({"email": mail, "password": PASSWORD}),
    )
    .expect("register")
}

#[track_caller]
fn assert_alive(gw: &mut Gateway) {
    let child = gw.child.as_mut().expect("gateway process");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the gateway died:\n{}",
        gw.stderr()
    );
}

/// One request made under traffic.
#[derive(Debug, Clone)]
struct Sample {
    kind: &'static str,
    sent: Instant,
    took: Duration,
    /// 0 when the request failed at the socket level.
    status: u16,
}

fn median(mut d: Vec<Duration>) -> Duration {
    if d.is_empty() {
        return Duration::ZERO;
    }
    d.sort();
    d[d.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// (a) the database goes away under traffic and comes back
// ---------------------------------------------------------------------------------------------

/// One kind of traffic, in a loop until `stop`: every answer recorded.
struct Client {
    kind: &'static str,
    addr: SocketAddr,
    auth: String,
    id: String,
    signer: String,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    registered: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn run(&self) {
        let addr = self.addr;
        while !self.stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let result = match self.kind {
                "me" => try_send_raw(
                    addr,
                    &request_bytes(
                        "GET",
                        "/api/v1/auth/me",
                        &[("Authorization", &self.auth)],
                        None,
                    ),
                ),
                "signin" => post(
                    addr,
                    "/api/v1/auth/signin",
                    &json!({"email": self.signer, "password": PASSWORD}),
                ),
                "register" => {
                    let mail = email();
                    let r = post(
                        addr,
                        "/api/v1/auth/register",
                        &json!({"email": mail, "password": PASSWORD}),
                    );
                    if r.as_ref().is_ok_and(|r| r.status == 201) {
                        self.registered.lock().unwrap().push(mail);
                    }
                    r
                }
                _ => try_send_raw(
                    addr,
                    &request_bytes(
                        "GET",
                        &format!("/api/{}/tasks/1", self.id),
                        &[("Authorization", &self.auth)],
                        None,
                    ),
                ),
            };
            self.samples.lock().unwrap().push(Sample {
                kind: self.kind,
                sent,
                took: sent.elapsed(),
                status: result.map_or(0, |r| r.status),
            });
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Postgres behind a forwarder that is cut (every connection dropped, new ones refused) while
/// four clients keep going: profile reads, sign-ins, registrations and proxied requests. While
/// it is down the identity endpoints answer 503 fast, the edge keeps proxying with tokens it
/// can verify alone, the process lives; when it is back everything recovers without a restart
/// and every acknowledged registration is in the database.
#[test]
#[allow(clippy::too_many_lines)] // one scenario: traffic, cut, restore, then what each phase saw
fn database_cut_under_traffic_gives_fast_503s_and_recovers_without_losing_accounts() {
    let db = Db::new(Store::Postgres);
    let (pg, url) = Cuttable::in_front_of(&db.url);
    let mut gw = Gateway::start(&config(&url, "{UPSTREAM}", ""), &[]);
    let addr = gw.addr;

    let reader = email();
    let r = register(addr, &reader);
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let id = r.json()["user"]["id"].as_str().unwrap().to_owned();
    let signer = email();
    assert_eq!(register(addr, &signer).status, 201);

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let registered = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = ["me", "signin", "register", "edge"]
        .into_iter()
        .map(|kind| {
            let client = Client {
                kind,
                addr,
                auth: format!("Bearer {token}"),
                id: id.clone(),
                signer: signer.clone(),
                stop: stop.clone(),
                samples: samples.clone(),
                registered: registered.clone(),
            };
            thread::spawn(move || client.run())
        })
        .collect();

    thread::sleep(Duration::from_secs(2));
    let cut_at = Instant::now();
    pg.cut();
    thread::sleep(Duration::from_secs(4));
    let restored_at = Instant::now();
    pg.restore();
    // recovery: the first profile read and sign-in answered 200 after the restore
    let deadline = restored_at + Duration::from_secs(20);
    let recovered_at = loop {
        let s = samples.lock().unwrap().clone();
        let ok = |k: &str| {
            s.iter()
                .filter(|x| x.kind == k && x.sent >= restored_at && x.status == 200)
                .map(|x| x.sent + x.took)
                .min()
        };
        if let (Some(a), Some(b)) = (ok("me"), ok("signin")) {
            break a.max(b);
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 20 s of the restore"
        );
        thread::sleep(Duration::from_millis(50));
    };
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_alive(&mut gw);

    let samples = samples.lock().unwrap().clone();
    // Requests sent in the second after a transition may see either side of it; a request
    // counts as "while down" when it started after that and was answered before the restore.
    let settle = Duration::from_secs(1);
    let down: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= cut_at + settle && s.sent + s.took < restored_at)
        .collect();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent >= recovered_at).collect();
    for s in &samples {
        assert!(
            matches!(s.status, 200 | 201 | 503),
            "a {} answered {} ({:?} after the cut)",
            s.kind,
            s.status,
            s.sent.checked_duration_since(cut_at)
        );
    }
    let mut down_503 = Vec::new();
    for s in &down {
        if s.kind == "edge" {
            assert_eq!(
                s.status, 200,
                "the edge must keep proxying while the store is down"
            );
        } else {
            assert_eq!(s.status, 503, "{} while the store is down", s.kind);
            down_503.push(s.took);
        }
    }
    assert!(
        down_503.len() >= 10,
        "too few requests while down: {}",
        down_503.len()
    );
    let slowest_503 = down_503.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_503 < Duration::from_secs(2),
        "a 503 took {slowest_503:?}"
    );
    for s in &after {
        assert!(
            matches!(s.status, 200 | 201),
            "{} answered {} after recovery",
            s.kind,
            s.status
        );
    }

    // nothing acknowledged was lost
    let stored = db.emails(gw.dir.path());
    let registered = registered.lock().unwrap().clone();
    for mail in registered.iter().chain([&reader, &signer]) {
        assert!(
            stored.contains(mail),
            "acknowledged account {mail} is missing"
        );
    }
    let r = post(
        addr,
        "/api/v1/auth/signin",
        &json!({"email": reader, "password": PASSWORD}),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    eprintln!(
        "db cut: {} requests in all, {} while down ({} identity 503s, median {:?}, slowest {:?}); \
         recovered {:?} after the restore; {} accounts registered under traffic, all present",
        samples.len(),
        down.len(),
        down_503.len(),
        median(down_503.clone()),
        slowest_503,
        recovered_at - restored_at,
        registered.len()
    );
}

/// The database stops answering without closing anything (a frozen server, a partition that
/// swallows packets): identity requests must still end, with 503, within the store's deadline,
/// not hang on a connection that will never answer; the edge keeps serving; when the database
/// answers again, so does the gateway.
#[test]
fn a_database_that_stops_answering_gives_503_within_the_deadline_not_a_hang() {
    let db = Db::new(Store::Postgres);
    let (pg, url) = Cuttable::in_front_of(&db.url);
    let mut gw = Gateway::start(&config(&url, "{UPSTREAM}", ""), &[]);
    let addr = gw.addr;
    let mail = email();
    let r = register(addr, &mail);
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let id = r.json()["user"]["id"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");

    pg.freeze();
    // several at once: pooled connections and new ones alike are stuck
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (auth, mail) = (auth.clone(), mail.clone());
            thread::spawn(move || {
                let t = Instant::now();
                let r = if i % 2 == 0 {
                    try_send_raw(
                        addr,
                        &request_bytes("GET", "/api/v1/auth/me", &[("Authorization", &auth)], None),
                    )
                } else {
                    post(
                        addr,
                        "/api/v1/auth/signin",
                        &json!({"email": mail, "password": PASSWORD}),
                    )
                };
                (r, t.elapsed())
            })
        })
        .collect();
    let edge = gw.get(&format!("/api/{id}/tasks/1"), &[("Authorization", &auth)]);
    assert_eq!(edge.status, 200, "the edge serves while the store hangs");
    let mut slowest = Duration::ZERO;
    for c in clients {
        let (r, took) = c.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("no answer after {took:?}: {e}"));
        assert_problem(&r, 503, "service_unavailable");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_secs(8), "a 503 took {slowest:?}");
    assert_alive(&mut gw);
    // the revocation sync times out too, so readiness follows instead of hanging at 200
    let t = Instant::now();
    while get(gw.admin, "/readyz", &[]).status != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "readyz still 200 with the store frozen"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let not_ready_after = t.elapsed();

    pg.thaw();
    let t = Instant::now();
    loop {
        let r = post(
            addr,
            "/api/v1/auth/signin",
            &json!({"email": mail, "password": PASSWORD}),
        )
        .unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no recovery after the thaw"
        );
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "frozen database: 6 identity requests answered 503, slowest after {slowest:?}; \
         readyz 503 {not_ready_after:?} later; recovered {:?} after the thaw",
        t.elapsed()
    );
    while get(gw.admin, "/readyz", &[]).status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "readyz did not recover"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// (b) an upstream that flaps
// ---------------------------------------------------------------------------------------------

/// An upstream address that is alternately served (forwarding to a recording echo upstream) and
/// closed (connections refused, established ones dropped).
struct Flapping {
    addr: SocketAddr,
    /// 1 = up, 0 = down; the state the listener thread converges to.
    want: Arc<AtomicU8>,
    /// The state actually in force.
    is: Arc<AtomicU8>,
}

impl Flapping {
    fn to(target: SocketAddr) -> Flapping {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let want = Arc::new(AtomicU8::new(1));
        let is = Arc::new(AtomicU8::new(1));
        let (want2, is2) = (want.clone(), is.clone());
        thread::spawn(move || {
            let mut listener = Some(first);
            let mut live: Vec<TcpStream> = Vec::new();
            loop {
                let up = want2.load(Ordering::SeqCst) == 1;
                match (&listener, up) {
                    (Some(_), false) => {
                        listener = None;
                        for s in live.drain(..) {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                        is2.store(0, Ordering::SeqCst);
                    }
                    (None, true) => {
                        if let Ok(l) = TcpListener::bind(addr) {
                            listener = Some(l);
                            is2.store(1, Ordering::SeqCst);
                        }
                    }
                    _ => {}
                }
                let Some(l) = &listener else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                l.set_nonblocking(true).unwrap();
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(target) else {
                            continue;
                        };
                        live.push(client.try_clone().unwrap());
                        live.push(server.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Flapping { addr, want, is }
    }

    fn set(&self, up: bool) {
        self.want.store(u8::from(up), Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.is.load(Ordering::SeqCst) != u8::from(up) {
            assert!(
                Instant::now() < deadline,
                "the flapping upstream did not switch"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The only upstream goes up and down every 1.5 s, six times, under a steady stream of
/// requests: 502 bad_gateway while it is down (fast), 200 while it is up, nothing else, no
/// request hangs, and the gateway is alive and proxying at the end.
#[test]
fn a_flapping_upstream_gives_502_while_down_and_200_while_up() {
    let echo = Upstream::spawn();
    let flap = Flapping::to(echo.addr);
    let mut gw = Gateway::start(
        &config(
            "sqlite://{DIR}/f.db",
            &flap.addr.to_string(),
            "health_check_interval_ms = 200",
        ),
        &[],
    );
    let addr = gw.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, samples) = (stop.clone(), samples.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = try_send_raw(addr, &request_bytes("GET", "/public/flap", &[], None));
                    if let Ok(r) = &r
                        && r.status == 502
                    {
                        assert_problem(r, 502, "bad_gateway");
                    }
                    samples.lock().unwrap().push(Sample {
                        kind: "proxy",
                        sent,
                        took: sent.elapsed(),
                        status: r.map_or(0, |r| r.status),
                    });
                    thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    // (state, from, to) windows
    let mut windows = Vec::new();
    for _ in 0..6 {
        for up in [false, true] {
            let from = Instant::now();
            flap.set(up);
            thread::sleep(Duration::from_millis(1500));
            windows.push((up, from, Instant::now()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_alive(&mut gw);

    let samples = samples.lock().unwrap().clone();
    // the health check (200 ms) and pooled connections lag a switch by a little
    let settle = Duration::from_millis(600);
    let (mut up_n, mut down_n, mut slowest) = (0, 0, Duration::ZERO);
    for s in &samples {
        assert!(
            matches!(s.status, 200 | 502),
            "a request answered {}",
            s.status
        );
        assert!(
            s.took < Duration::from_secs(4),
            "a request took {:?}",
            s.took
        );
        slowest = slowest.max(s.took);
        let Some(&(up, _, _)) = windows
            .iter()
            .find(|(_, from, to)| s.sent >= *from + settle && s.sent + s.took <= *to)
        else {
            continue;
        };
        if up {
            assert_eq!(s.status, 200, "while the upstream was up");
            up_n += 1;
        } else {
            assert_eq!(s.status, 502, "while the upstream was down");
            down_n += 1;
        }
    }
    assert!(
        up_n >= 30 && down_n >= 30,
        "too few settled samples: {up_n} up, {down_n} down"
    );
    let r = gw.get("/public/after", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    eprintln!(
        "flapping upstream: {} requests over 6 down/up cycles; settled: {up_n} × 200 while up, \
         {down_n} × 502 while down; slowest answer {slowest:?}",
        samples.len()
    );
}

// ---------------------------------------------------------------------------------------------
// (c) the embedded store's disk fills up
// ---------------------------------------------------------------------------------------------

/// A small tmpfs mounted for one test (root, or password-less sudo), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        let args = ["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path];
        let ok = std::process::Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
            || std::process::Command::new("sudo")
                .arg("-n")
                .arg("mount")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "this test mounts a small tmpfs to fill it: run it as root or with password-less sudo"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.dir.path().to_string_lossy().into_owned();
        if !std::process::Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success())
        {
            let _ = std::process::Command::new("sudo")
                .args(["-n", "umount", &path])
                .status();
        }
    }
}

/// The SQLite store on a 4 MiB tmpfs that is then filled: registrations get 503
/// service_unavailable (never a 500), sign-ins of earlier accounts still work, the gateway
/// lives, and once space is freed registrations work again without a restart. Afterwards
/// `PRAGMA integrity_check` is ok and every acknowledged account is there.
#[test]
fn a_full_disk_under_the_sqlite_store_is_503_and_the_database_stays_intact() {
    let disk = SmallDisk::mount("4m");
    let file = disk.path().join("store.db");
    let url = format!("sqlite://{}", file.display());
    let mut gw = Gateway::start(&config(&url, "{UPSTREAM}", ""), &[]);
    let addr = gw.addr;

    let mut acknowledged = Vec::new();
    for _ in 0..3 {
        let mail = email();
        assert_eq!(register(addr, &mail).status, 201);
        acknowledged.push(mail);
    }

    let filler = disk.fill();
    let mut refused = 0;
    let mut took = Vec::new();
    for _ in 0..10 {
        let mail = email();
        let t = Instant::now();
        let r = register(addr, &mail);
        took.push(t.elapsed());
        match r.status {
            201 => acknowledged.push(mail),
            503 => {
                assert_problem(&r, 503, "service_unavailable");
                assert!(r.header("retry-after").is_some());
                refused += 1;
            }
            other => panic!("register on a full disk answered {other}: {}", r.text()),
        }
    }
    assert!(
        refused >= 8,
        "a full disk refused only {refused} of 10 registrations"
    );
    // reads still work
    let r = post(
        addr,
        "/api/v1/auth/signin",
        &json!({"email": acknowledged[0], "password": PASSWORD}),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/public/x", &[]).status, 200, "the edge serves");
    assert_alive(&mut gw);

    // space comes back: so do registrations, without a restart
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    let deadline = t + Duration::from_secs(10);
    loop {
        let mail = email();
        let r = register(addr, &mail);
        if r.status == 201 {
            acknowledged.push(mail);
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "no recovery after freeing space");
        thread::sleep(Duration::from_millis(100));
    }
    let recovered = t.elapsed();
    assert!(
        gw.terminate(Duration::from_secs(10)).is_some(),
        "no clean exit"
    );

    let conn = rusqlite::Connection::open(&file).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn.prepare("SELECT email FROM users").unwrap();
    let stored: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for mail in &acknowledged {
        assert!(
            stored.contains(mail),
            "acknowledged account {mail} is missing"
        );
    }
    eprintln!(
        "full disk: {refused}/10 registrations refused with 503 (median {:?}); recovered {recovered:?} \
         after freeing space; integrity_check ok; {} accounts intact",
        median(took),
        acknowledged.len()
    );
}
