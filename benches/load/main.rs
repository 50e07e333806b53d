//! The side-by-side load harness: `cargo bench --bench load`.
//!
//! In one run it starts a fast upstream (nginx returning a fixed body), Portcullis (release
//! build) with HS256 and with EdDSA, each at one and two worker threads and at the default log
//! level (`info`, an access line per request, read off a pipe) and at `warn`, and HAProxy
//! verifying HS256 with the peer config at one and two threads. It measures with `wrk`,
//! alternating targets round by round and reporting medians: first the CPU time each proxy
//! process spends per request (`cpu.rs`) for the public route, the required route with HS256
//! and with EdDSA, and HAProxy; then, at two threads and the default log level, throughput and
//! latency beside the upstream direct, latency at a fixed rate, a sign-in flood, and the RSS
//! holding 1000 idle keep-alive connections. The tables go to stdout and to
//! `docs/PERFORMANCE.md` with the machine.
//!
//! Needs `nginx`, `haproxy` and `wrk` on PATH (Debian: nginx-light, haproxy, wrk); it says so
//! and exits non-zero when one is missing. Knobs (environment): `LOAD_SECONDS` (5),
//! `LOAD_ROUNDS` (3), `LOAD_CONNECTIONS` (64), `LOAD_THREADS` (2), `LOAD_SOAK_SECONDS` (60);
//! `LOAD_ONLY=cpu` (or `flood`, or `rate` at `LOAD_RATE`/s) runs that section alone and prints it without touching the
//! document; `LOAD_BINARY=path` measures that build instead of building this checkout's.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod client;
mod cpu;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "load-harness-secret-load-harness-secret-0123";
const SUB: &str = "5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop (nginx runs without a master process, so killing the one
/// process leaves no orphaned worker behind to skew the next run).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "load harness: `{tool}` is missing (Debian: apt-get install nginx-light haproxy wrk)"
        );
        std::process::exit(2);
    }
}

fn tokens(dir: &Path) -> (String, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": SUB, "email": "load@example.com", "iat": now, "exp": now + 7200,
        "jti": "6b1d1a44-3e4b-4d3f-8a2b-1c2d3e4f5a6b", "iss": "portcullis", "aud": "portcullis"});
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let pem = std::fs::read(manifest().join("tests/fixtures/keys/ed25519.pem")).unwrap();
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("load".into());
    let ed = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap();
    let _ = dir;
    (hs, ed)
}

/// The gateway under test: `LOAD_BINARY` (a build kept aside, for an A/B of two builds) or
/// the release build of this checkout.
fn binary() -> PathBuf {
    std::env::var_os("LOAD_BINARY").map_or_else(
        || manifest().join("target/release/portcullis"),
        PathBuf::from,
    )
}

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn start_nginx(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\nerror_log {dir}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n\
               uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "-e",
            dir.join("nginx-error.log").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    wait_port(port, "nginx");
    Proc(child)
}

/// A gateway under test: the process and its admin port (for `/metrics`).
struct Gw {
    proc: Proc,
    admin: u16,
}

/// How a gateway under test runs: worker threads, log level (`None`: the default, `info`,
/// which writes an access line per request; what users run) and `server.server_timing`.
#[derive(Debug, Clone, Copy)]
struct Run {
    threads: u64,
    log: Option<&'static str>,
    server_timing: bool,
    /// Signed identity assertions on (CONTRACT 9): the key fixture and `bind_request`.
    assertion: Option<(&'static str, bool)>,
}

impl Run {
    /// What users run: two threads (one per core here), the default log level.
    const DEFAULT: Self = Self {
        threads: 2,
        log: None,
        server_timing: false,
        assertion: None,
    };
}

fn start_portcullis(
    dir: &Path,
    name: &str,
    port: u16,
    upstream: u16,
    tokens: &str,
    run: Run,
) -> Gw {
    let admin = free_port();
    let threads = run.threads;
    let server_timing = run.server_timing;
    let (assertion, assertion_section) = match run.assertion {
        Some((key, bind)) => (
            true,
            format!(
                "[assertion]\nprivate_key_file = \"{}\"\nkid = \"load-assert\"\nbind_request = {bind}\n",
                manifest().join("tests/fixtures/keys").join(key).display()
            ),
        ),
        None => (false, String::new()),
    };
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = {threads}
grace_period_secs = 0
server_timing = {server_timing}
[store]
url = "sqlite://{dir}/{name}.db"
{tokens}
{assertion_section}
[rate_limit]
# The sign-in flood must reach bcrypt (a flood from many addresses would): no per-IP cut-off.
per_ip_per_minute = 100000000
failed_signins_per_email_per_minute = 100000000
[[upstream]]
name = "app"
addrs = ["127.0.0.1:{upstream}"]
assertion = {assertion}
[[route]]
path = "/api/{{user_id}}/{{*rest}}"
upstream = "app"
auth = "required"
owner = "user_id"
[[route]]
path = "/public/{{*rest}}"
upstream = "app"
auth = "public"
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    let bin = binary();
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config", conf.to_str().unwrap()])
        .env("LOAD_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(level) = run.log {
        cmd.env("RUST_LOG", level);
    }
    let mut child = cmd
        .spawn()
        .expect("portcullis release binary (cargo build --release)");
    drain(child.stderr.take().expect("piped stderr"));
    wait_port(port, "portcullis");
    Gw {
        proc: Proc(child),
        admin,
    }
}

/// Reads a gateway's log lines and throws them away, as a log shipper (journald, a container
/// runtime) would: the access lines cost their formatting and their write, as in production.
fn drain(mut stderr: std::process::ChildStderr) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while matches!(stderr.read(&mut buf), Ok(n) if n > 0) {}
    });
}

fn start_haproxy(dir: &Path, port: u16, upstream: u16, threads: u64) -> Proc {
    let shared = manifest().join("../shared/peers/haproxy-jwt.cfg");
    let cfg = if shared.exists() {
        shared
    } else {
        manifest().join("benches/haproxy-jwt.cfg")
    };
    let child = Command::new("haproxy")
        .args(["-f", cfg.to_str().unwrap()])
        .env("HAP_LISTEN", format!("127.0.0.1:{port}"))
        .env("HAP_UPSTREAM", format!("127.0.0.1:{upstream}"))
        .env("HAP_SECRET", SECRET)
        .env("HAP_THREADS", threads.to_string())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    wait_port(port, "haproxy");
    Proc(child)
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// Requests wrk completed.
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    /// wrk's socket errors (connect, read, write, timeout), summed.
    socket_errors: u64,
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "s" => v * 1000.0,
        _ => v,
    }
}

fn wrk(url: &str, token: Option<&str>, secs: u64, conns: u64, threads: u64) -> Sample {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
        "--latency",
    ]);
    let header;
    if let Some(t) = token {
        header = format!("Authorization: Bearer {t}");
        cmd.args(["-H", &header]);
    }
    let out = cmd.arg(url).output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut s = Sample::default();
    for line in text.lines() {
        let l = line.trim();
        if let Some((n, _)) = l.split_once(" requests in ") {
            s.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            s.p50_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            s.socket_errors = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// RSS of `pid` in MiB after opening `n` idle keep-alive connections through `port`.
fn rss_with_idle_connections(pid: u32, port: u16, n: usize) -> (f64, f64, usize) {
    let before = rss_mib(pid);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        let _ = s.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        conns.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    (before, rss_mib(pid), conns.len())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {}",
        mem.replace("MemTotal:", "RAM")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    secs: u64,
    rounds: u64,
    conns: u64,
    threads: u64,
}

/// Alternating rounds over every target; the median of each.
fn measure(targets: &[(&str, String, Option<&str>)], k: Knobs) -> Vec<Sample> {
    let Knobs {
        secs,
        rounds,
        conns,
        threads,
    } = k;
    // Warm-up: one short run each.
    for (_, url, tok) in targets {
        wrk(url, *tok, 1, conns, threads);
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, url, tok)) in targets.iter().enumerate() {
            let s = wrk(url, *tok, secs, conns, threads);
            eprintln!(
                "round {round} {name}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms non-2xx {}",
                s.rps, s.p50_ms, s.p99_ms, s.non_2xx
            );
            assert_eq!(
                s.non_2xx, 0,
                "{name} answered non-2xx under load: the setup is wrong"
            );
            samples[i].push(s);
        }
    }
    samples
        .iter()
        .map(|v| Sample {
            rps: median(v.iter().map(|s| s.rps).collect()),
            p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
            p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
            ..Sample::default()
        })
        .collect()
}

/// Reads one counter (summed over its label sets) from a gateway's `/metrics`.
fn counter(admin: u16, name: &str, label: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) else {
        return f64::NAN;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Latency at a fixed rate: the same rate against the upstream direct, the gateway's required
/// route and HAProxy, alternating rounds; medians of p50 / p99.
struct AtRate {
    rate: f64,
    /// (name, median sample) per target.
    rows: Vec<(String, client::RateSample)>,
}

/// (name, port, request, pid of the process that answers) of one fixed-rate target.
type RateTarget<'a> = (&'a str, u16, Vec<u8>, u32);

fn at_fixed_rate(targets: &[RateTarget<'_>], rate: f64, k: Knobs) -> AtRate {
    let conns = 16;
    let mut samples: Vec<Vec<client::RateSample>> = vec![Vec::new(); targets.len()];
    for round in 0..k.rounds {
        for (i, (name, port, req, pid)) in targets.iter().enumerate() {
            let (w0, n0) = cpu::run_queue_wait(*pid);
            let mut s = client::fixed_rate(*port, req, rate, k.secs, conns);
            let (w1, n1) = cpu::run_queue_wait(*pid);
            #[allow(clippy::cast_precision_loss)]
            {
                let answered = s.sent_per_sec * k.secs as f64;
                s.wait_us = (w1 - w0) as f64 / 1000.0 / answered.max(1.0);
                s.wait_per_slice_us = (w1 - w0) as f64 / 1000.0 / ((n1 - n0) as f64).max(1.0);
            }
            eprintln!(
                "fixed rate {rate:.0}/s round {round} {name}: sent {:.0}/s p50 {:.3} ms p99 {:.3} ms errors {} \
                 run-queue wait {:.1} us/request {:.1} us/slice",
                s.sent_per_sec, s.p50_ms, s.p99_ms, s.errors, s.wait_us, s.wait_per_slice_us
            );
            assert_eq!(s.errors, 0, "{name} failed requests at a fixed rate");
            samples[i].push(s);
        }
    }
    let rows = targets
        .iter()
        .zip(samples)
        .map(|((name, _, _, _), v)| {
            let m = client::RateSample {
                sent_per_sec: median(v.iter().map(|s| s.sent_per_sec).collect()),
                p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
                p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
                errors: 0,
                wait_us: median(v.iter().map(|s| s.wait_us).collect()),
                wait_per_slice_us: median(v.iter().map(|s| s.wait_per_slice_us).collect()),
            };
            ((*name).to_owned(), m)
        })
        .collect();
    AtRate { rate, rows }
}

/// The required route with and without a sign-in flood at ten times what bcrypt can serve,
/// alternating rounds.
struct FloodResult {
    signin_ms: f64,
    capacity: f64,
    calm: Sample,
    flooded: Sample,
    flood: client::FloodReport,
}

fn under_flood(port: u16, url: &str, token: &str, k: Knobs) -> FloodResult {
    let signin_ms = client::signin_ms(port, 5);
    #[allow(clippy::cast_precision_loss)]
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    // The bcrypt pool has one worker per core.
    let capacity = cores * 1000.0 / signin_ms;
    let mut calm = Vec::new();
    let mut flooded = Vec::new();
    let mut report = client::FloodReport::default();
    for round in 0..k.rounds {
        let c = wrk(url, Some(token), k.secs, k.conns, k.threads);
        let flood = client::Flood::start(port, capacity * 10.0, 32);
        std::thread::sleep(Duration::from_millis(500));
        let f = wrk(url, Some(token), k.secs, k.conns, k.threads);
        let r = flood.finish();
        eprintln!(
            "flood round {round}: calm {:.0} req/s p99 {:.3} ms; flooded {:.0} req/s p99 {:.3} ms; flood {:?}",
            c.rps, c.p99_ms, f.rps, f.p99_ms, r.statuses
        );
        assert_eq!(
            c.non_2xx + f.non_2xx,
            0,
            "the required route failed requests"
        );
        calm.push(c);
        flooded.push(f);
        report.sent += r.sent;
        report.secs += r.secs;
        for (s, n) in &r.statuses {
            *report.statuses.entry(*s).or_default() += n;
        }
        // The last round's refusal latencies stand for the run.
        report.refusal_p50_ms = r.refusal_p50_ms;
        report.refusal_p99_ms = r.refusal_p99_ms;
    }
    let med = |v: &[Sample]| Sample {
        rps: median(v.iter().map(|s| s.rps).collect()),
        p50_ms: median(v.iter().map(|s| s.p50_ms).collect()),
        p99_ms: median(v.iter().map(|s| s.p99_ms).collect()),
        ..Sample::default()
    };
    FloodResult {
        signin_ms,
        capacity,
        calm: med(&calm),
        flooded: med(&flooded),
        flood: report,
    }
}

/// 1000 concurrent connections through the required route for `secs`, RSS sampled each second.
struct Soak {
    secs: u64,
    conns: u64,
    run: Sample,
    rss_start: f64,
    rss_after_warmup: f64,
    rss_end: f64,
    rss_max: f64,
}

fn soak(pid: u32, url: &str, token: &str, secs: u64) -> Soak {
    let conns = 1000;
    let rss_start = rss_mib(pid);
    let sampler = std::thread::spawn(move || {
        let mut v = Vec::new();
        for _ in 0..secs {
            std::thread::sleep(Duration::from_secs(1));
            v.push(rss_mib(pid));
        }
        v
    });
    let run = wrk(url, Some(token), secs, conns, 2);
    let rss = sampler.join().expect("rss sampler");
    eprintln!(
        "soak: {:.0} req/s, non-2xx {}, socket errors {}, rss {rss:?}",
        run.rps, run.non_2xx, run.socket_errors
    );
    let warm = rss.len() / 5;
    Soak {
        secs,
        conns,
        run,
        rss_start,
        rss_after_warmup: rss.get(warm).copied().unwrap_or(f64::NAN),
        rss_end: rss.last().copied().unwrap_or(f64::NAN),
        rss_max: rss.iter().copied().fold(f64::NAN, f64::max),
    }
}

/// Everything one run measured.
struct Results<'a> {
    cpu: (&'a [cpu::Target], Vec<cpu::Row>),
    names: Vec<&'a str>,
    med: Vec<Sample>,
    rss: (f64, f64, usize),
    new_upstream_per_1000: f64,
    at_rate: AtRate,
    flood: FloodResult,
    soak: Soak,
}

/// A Markdown table: a header row, the alignment row (first column left, the rest right), rows.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let align: Vec<&str> = (0..header.len())
        .map(|i| if i == 0 { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "| {} |", align.join(" | "));
    for cells in rows {
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn throughput_section(res: &Results, out: &mut String) {
    let rows: Vec<Vec<String>> = res
        .names
        .iter()
        .zip(&res.med)
        .map(|(name, s)| {
            vec![
                (*name).into(),
                format!("{:.0}", s.rps),
                ms(s.p50_ms),
                ms(s.p99_ms),
            ]
        })
        .collect();
    table(
        out,
        &["target", "req/s (median)", "p50 ms", "p99 ms"],
        &rows,
    );
    let _ = writeln!(
        out,
        "\nAt a fixed rate of {:.0} requests/s (half the required route's maximum above), 16 connections, \
         latency counted from when each request was due; run-queue wait is the time the \
         answering process's threads were runnable but had no core (`/proc/PID/task/*/schedstat`):\n",
        res.at_rate.rate
    );
    let rows: Vec<Vec<String>> = res
        .at_rate
        .rows
        .iter()
        .map(|(name, s)| {
            vec![
                name.clone(),
                format!("{:.0}", s.sent_per_sec),
                ms(s.p50_ms),
                ms(s.p99_ms),
                format!("{:.1}", s.wait_us),
                format!("{:.1}", s.wait_per_slice_us),
            ]
        })
        .collect();
    table(
        out,
        &[
            "target",
            "sent/s",
            "p50 ms",
            "p99 ms",
            "run-queue wait µs / request",
            "µs / time slice",
        ],
        &rows,
    );
}

fn flood_and_soak_section(res: &Results, out: &mut String) {
    let flood = &res.flood;
    let statuses = flood
        .flood
        .statuses
        .iter()
        .map(|(status, n)| {
            if *status == 0 {
                format!("transport error × {n}")
            } else {
                format!("{status} × {n}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\nSign-in flood: one sign-in costs {:.0} ms of bcrypt, so the pool serves about {:.1}/s; the flood \
         offered {:.1}/s (10× that) of unknown-email sign-ins with the per-IP limit lifted, and got: {statuses}; \
         refusals answered in p50 {:.2} ms / p99 {:.2} ms.\n",
        flood.signin_ms,
        flood.capacity,
        flood.capacity * 10.0,
        flood.flood.refusal_p50_ms,
        flood.flood.refusal_p99_ms,
    );
    table(
        out,
        &["required route, HS256", "req/s (median)", "p99 ms"],
        &[
            vec![
                "without the flood".into(),
                format!("{:.0}", flood.calm.rps),
                ms(flood.calm.p99_ms),
            ],
            vec![
                "during the flood".into(),
                format!("{:.0}", flood.flooded.rps),
                ms(flood.flooded.p99_ms),
            ],
        ],
    );
    let soak = &res.soak;
    let _ = writeln!(
        out,
        "\nSoak: {} concurrent connections on the required route for {} s: {:.0} req/s, {} non-2xx, {} socket errors; \
         RSS {:.1} MiB before, {:.1} MiB after the first fifth, {:.1} MiB at the end (max {:.1} MiB).",
        soak.conns,
        soak.secs,
        soak.run.rps,
        soak.run.non_2xx,
        soak.run.socket_errors,
        soak.rss_start,
        soak.rss_after_warmup,
        soak.rss_end,
        soak.rss_max
    );
}

fn ratios_section(res: &Results, out: &mut String) {
    let med = &res.med;
    let ratio = |a: usize, b: usize| format!("{:.3}", med[a].rps / med[b].rps);
    let direct_p99 = res.at_rate.rows[0].1.p99_ms;
    let gw_p99 = res.at_rate.rows[1].1.p99_ms;
    let (rss_before, rss_after, held) = res.rss;
    let flood = &res.flood;
    let rows: Vec<Vec<String>> = [
        ("required HS256 / public", ratio(2, 1), "≥ 0.95"),
        ("required HS256 / HAProxy jwt_verify", ratio(2, 4), "≥ 1.0"),
        ("required EdDSA / public", ratio(3, 1), "—"),
        ("public / upstream direct", ratio(1, 0), "—"),
        (
            "p99 added over direct, required HS256, at half its maximum load",
            format!("{:.3} ms", gw_p99 - direct_p99),
            "≤ 1 ms",
        ),
        (
            "RSS holding idle keep-alive connections",
            format!("{rss_after:.1} MiB for {held} (idle before: {rss_before:.1} MiB)"),
            "≤ 64 MiB for 1000",
        ),
        (
            "required route under a sign-in flood / without",
            format!("{:.3}", flood.flooded.rps / flood.calm.rps),
            "≥ 0.8",
        ),
        (
            "its p99 under the flood / without",
            format!("{:.2}", flood.flooded.p99_ms / flood.calm.p99_ms),
            "≤ 1.5",
        ),
        (
            "new upstream connections per 1000 proxied requests",
            format!("{:.2}", res.new_upstream_per_1000),
            "—",
        ),
    ]
    .into_iter()
    .map(|(what, measured, target)| vec![what.into(), measured, target.into()])
    .collect();
    table(out, &["ratio", "measured", "target"], &rows);
}

fn write_report(res: &Results, knobs: Knobs) {
    let Knobs {
        secs,
        rounds,
        conns,
        threads,
    } = knobs;
    let mut body = String::new();
    cpu::section(res.cpu.0, &res.cpu.1, secs, rounds, &mut body);
    let _ = writeln!(
        body,
        "\nThroughput and latency at two threads and the default log level, `wrk -t{threads} -c{conns} -d{secs}s`:\n"
    );
    throughput_section(res, &mut body);
    flood_and_soak_section(res, &mut body);
    body.push('\n');
    ratios_section(res, &mut body);
    let report = format!(
        "## Latest run\n\nMachine: {}. `wrk -t{threads} -c{conns} -d{secs}s`, {rounds} alternating rounds, medians; \
         every process (wrk, nginx, the gateways, HAProxy) shares the same cores.\n\n{body}",
        machine()
    );
    println!("{report}");
    let doc = manifest().join("docs/PERFORMANCE.md");
    let old = std::fs::read_to_string(&doc).unwrap_or_default();
    let kept = old
        .split("## Latest run")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    let preamble = if kept.is_empty() {
        "# Performance\n\nProduced by `cargo bench --bench load` (see `benches/load/`). Figures are ratios \
         measured side by side in one run; absolute numbers depend on the machine.\n"
            .to_owned()
    } else {
        kept
    };
    std::fs::write(&doc, format!("{preamble}\n\n{report}")).unwrap();
    eprintln!("wrote {}", doc.display());
}

/// How many of the gateway's upstream connections so far were new, per 1000 proxied requests.
fn new_upstream_per_1000(admin: u16) -> f64 {
    let metric = "portcullis_upstream_connections_total";
    let new = counter(admin, metric, "reused=\"false\"");
    let reused = counter(admin, metric, "reused=\"true\"");
    new * 1000.0 / (new + reused)
}

const HS_TOKENS: &str = "[tokens]\nsecret_env = \"LOAD_SECRET\"\n";

/// Every proxy process of the run: Portcullis with HS256 and with EdDSA at one and two worker
/// threads and at the default log level and `warn`, HAProxy at one and two threads.
struct Matrix {
    /// (name, run, process, port) of each gateway.
    gateways: Vec<(&'static str, u64, Option<&'static str>, Gw, u16)>,
    /// (threads, process, port) of each HAProxy.
    haproxies: Vec<(u64, Proc, u16)>,
    targets: Vec<cpu::Target>,
}

impl Matrix {
    fn start(dir: &Path, up: u16, api: &str, hs: &str, ed: &str) -> Self {
        let ed_pem = manifest().join("tests/fixtures/keys/ed25519.pem");
        let ed_tokens = format!(
            "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{}\"\nkid = \"load\"\n",
            ed_pem.display()
        );
        let mut m = Self {
            gateways: Vec::new(),
            haproxies: Vec::new(),
            targets: Vec::new(),
        };
        for threads in [1, 2] {
            for (log, label) in [(None, cpu::DEFAULT_LOG), (Some("warn"), "warn")] {
                let run = Run {
                    threads,
                    log,
                    server_timing: false,
                    assertion: None,
                };
                let tag = format!("t{threads}-{}", log.unwrap_or("default"));
                for (alg, tokens) in [("hs", HS_TOKENS), ("ed", ed_tokens.as_str())] {
                    let port = free_port();
                    let gw = start_portcullis(dir, &format!("{alg}-{tag}"), port, up, tokens, run);
                    let pid = gw.proc.0.id();
                    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
                    if alg == "hs" {
                        m.targets.push(cpu::Target {
                            name: cpu::PUBLIC,
                            threads,
                            log: label,
                            url: url("/public/x"),
                            token: None,
                            pid,
                        });
                        m.targets.push(cpu::Target {
                            name: cpu::REQUIRED_HS256,
                            threads,
                            log: label,
                            url: url(api),
                            token: Some(hs.to_owned()),
                            pid,
                        });
                    } else {
                        m.targets.push(cpu::Target {
                            name: cpu::REQUIRED_EDDSA,
                            threads,
                            log: label,
                            url: url(api),
                            token: Some(ed.to_owned()),
                            pid,
                        });
                    }
                    m.gateways.push((alg, threads, log, gw, port));
                }
            }
            if threads == 2 {
                m.start_costed_features(dir, up, api, hs);
            }
            let port = free_port();
            let hap = start_haproxy(dir, port, up, threads);
            m.targets.push(cpu::Target {
                name: cpu::HAPROXY,
                threads,
                log: "—",
                url: format!("http://127.0.0.1:{port}{api}"),
                token: Some(hs.to_owned()),
                pid: hap.0.id(),
            });
            m.haproxies.push((threads, hap, port));
        }
        m
    }

    /// The default run (two threads, default log) with one costed feature on each: what
    /// `Server-Timing` (CONTRACT 15) and identity assertions (CONTRACT 9) cost.
    fn start_costed_features(&mut self, dir: &Path, up: u16, api: &str, hs: &str) {
        let m = self;
        let threads = 2;
        // What `Server-Timing` costs (CONTRACT 15): the default run with it on.
        let run = Run {
            server_timing: true,
            ..Run::DEFAULT
        };
        let port = free_port();
        let gw = start_portcullis(dir, "hs-timed", port, up, HS_TOKENS, run);
        m.targets.push(cpu::Target {
            name: cpu::REQUIRED_HS256_TIMED,
            threads,
            log: cpu::DEFAULT_LOG,
            url: format!("http://127.0.0.1:{port}{api}"),
            token: Some(hs.to_owned()),
            pid: gw.proc.0.id(),
        });
        m.gateways.push(("hs-timed", threads, None, gw, port));
        // What assertions cost (CONTRACT 9): cached, and bound per request with each
        // key type.
        for (name, tag, key, bind) in [
            (
                cpu::REQUIRED_HS256_ASSERTED,
                "hs-asserted",
                "ed25519.pem",
                false,
            ),
            (
                cpu::REQUIRED_HS256_BOUND_ED,
                "hs-bound-ed",
                "ed25519.pem",
                true,
            ),
            (
                cpu::REQUIRED_HS256_BOUND_P256,
                "hs-bound-p256",
                "p256.pem",
                true,
            ),
        ] {
            let run = Run {
                assertion: Some((key, bind)),
                ..Run::DEFAULT
            };
            let port = free_port();
            let gw = start_portcullis(dir, tag, port, up, HS_TOKENS, run);
            m.targets.push(cpu::Target {
                name,
                threads,
                log: cpu::DEFAULT_LOG,
                url: format!("http://127.0.0.1:{port}{api}"),
                token: Some(hs.to_owned()),
                pid: gw.proc.0.id(),
            });
            m.gateways.push((tag, threads, None, gw, port));
        }
    }

    /// The gateway `alg` ("hs" or "ed") running as `run`, and its port.
    fn gateway(&self, alg: &str, run: Run) -> (&Gw, u16) {
        self.gateways
            .iter()
            .find(|(a, t, l, _, _)| *a == alg && *t == run.threads && *l == run.log)
            .map(|(_, _, _, gw, port)| (gw, *port))
            .expect("the matrix runs every gateway")
    }

    /// The process id of HAProxy at `threads`.
    fn haproxy_pid(&self, threads: u64) -> u32 {
        self.haproxies
            .iter()
            .find(|(t, _, _)| *t == threads)
            .map(|(_, p, _)| p.0.id())
            .expect("the matrix runs HAProxy at one and two threads")
    }

    /// The port of HAProxy at `threads`.
    fn haproxy(&self, threads: u64) -> u16 {
        self.haproxies
            .iter()
            .find(|(t, _, _)| *t == threads)
            .map(|(_, _, port)| *port)
            .expect("the matrix runs HAProxy at one and two threads")
    }
}

/// The required route at two threads and the default log level, and HAProxy at two threads,
/// as fixed-rate targets.
fn proxy_rate_targets<'m>(matrix: &'m Matrix, api: &str, hs: &str) -> [RateTarget<'m>; 2] {
    let (gw, p_hs) = matrix.gateway("hs", Run::DEFAULT);
    [
        (
            "portcullis required, HS256",
            p_hs,
            client::get(api, Some(hs)),
            gw.proc.0.id(),
        ),
        (
            "haproxy jwt_verify HS256",
            matrix.haproxy(2),
            client::get(api, Some(hs)),
            matrix.haproxy_pid(2),
        ),
    ]
}

/// `LOAD_ONLY=rate`: the fixed-rate section alone at `LOAD_RATE` requests/s, printed with the
/// run-queue wait of each answering process.
fn rate_only(matrix: &Matrix, api: &str, hs: &str, k: Knobs) {
    let targets = proxy_rate_targets(matrix, api, hs);
    #[allow(clippy::cast_precision_loss)]
    let rate = env_or("LOAD_RATE", 13000) as f64;
    for (name, s) in at_fixed_rate(&targets, rate, k).rows {
        println!(
            "{name}: p50 {:.3} ms p99 {:.3} ms run-queue wait {:.1} us/request {:.1} us/slice",
            s.p50_ms, s.p99_ms, s.wait_us, s.wait_per_slice_us
        );
    }
}

/// `LOAD_ONLY=flood`: the sign-in flood section alone, printed.
fn flood_only(matrix: &Matrix, api: &str, hs: &str, k: Knobs) {
    let (_, p_hs) = matrix.gateway("hs", Run::DEFAULT);
    let f = under_flood(p_hs, &format!("http://127.0.0.1:{p_hs}{api}"), hs, k);
    println!(
        "flood: {:.3} of calm throughput ({:.0} / {:.0} req/s), p99 x{:.2} ({:.3} / {:.3} ms); \
         refusals p50 {:.2} ms p99 {:.2} ms; {:?}",
        f.flooded.rps / f.calm.rps,
        f.flooded.rps,
        f.calm.rps,
        f.flooded.p99_ms / f.calm.p99_ms,
        f.flooded.p99_ms,
        f.calm.p99_ms,
        f.flood.refusal_p50_ms,
        f.flood.refusal_p99_ms,
        f.flood.statuses,
    );
}

fn main() {
    // `cargo test --all-targets` runs bench targets with `--test`/`--bench` flags in test mode:
    // do nothing then, the harness is for `cargo bench --bench load` only.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for tool in ["nginx", "haproxy", "wrk"] {
        require(tool);
    }
    let k = Knobs {
        secs: env_or("LOAD_SECONDS", 5),
        rounds: env_or("LOAD_ROUNDS", 3),
        conns: env_or("LOAD_CONNECTIONS", 64),
        threads: env_or("LOAD_THREADS", 2),
    };
    let soak_secs = env_or("LOAD_SOAK_SECONDS", 60);
    if std::env::var_os("LOAD_BINARY").is_none() {
        let status = Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .current_dir(manifest())
            .status()
            .expect("cargo");
        assert!(status.success(), "release build failed");
    }

    let dir = tempfile::tempdir().unwrap();
    let (hs, ed) = tokens(dir.path());
    let up = free_port();
    let nginx = start_nginx(dir.path(), up);
    let api = format!("/api/{SUB}/tasks/1");
    let matrix = Matrix::start(dir.path(), up, &api, &hs, &ed);
    if std::env::var("LOAD_ONLY").as_deref() == Ok("flood") {
        flood_only(&matrix, &api, &hs, k);
        return;
    }
    if std::env::var("LOAD_ONLY").as_deref() == Ok("rate") {
        rate_only(&matrix, &api, &hs, k);
        return;
    }
    let cpu_rows = cpu::measure(&matrix.targets, k.secs, k.rounds);
    if std::env::var("LOAD_ONLY").as_deref() == Ok("cpu") {
        let mut out = String::new();
        cpu::section(&matrix.targets, &cpu_rows, k.secs, k.rounds, &mut out);
        println!("{out}");
        return;
    }
    // The throughput, latency, flood and memory sections measure what users run: two
    // threads, the default log level.
    let (gw_hs, p_hs) = matrix.gateway("hs", Run::DEFAULT);
    let (_, p_ed) = matrix.gateway("ed", Run::DEFAULT);
    let p_hap = matrix.haproxy(2);

    let required = format!("http://127.0.0.1:{p_hs}{api}");
    let targets: Vec<(&str, String, Option<&str>)> = vec![
        (
            "upstream direct (nginx)",
            format!("http://127.0.0.1:{up}{api}"),
            None,
        ),
        (
            cpu::PUBLIC,
            format!("http://127.0.0.1:{p_hs}/public/x"),
            None,
        ),
        (cpu::REQUIRED_HS256, required.clone(), Some(&hs)),
        (
            cpu::REQUIRED_EDDSA,
            format!("http://127.0.0.1:{p_ed}{api}"),
            Some(&ed),
        ),
        (
            cpu::HAPROXY,
            format!("http://127.0.0.1:{p_hap}{api}"),
            Some(&hs),
        ),
    ];
    let med = measure(&targets, k);
    let new_upstream_per_1000 = new_upstream_per_1000(gw_hs.admin);
    let gw_pid = gw_hs.proc.0.id();

    let mut rate_targets = vec![(
        "upstream direct (nginx)",
        up,
        client::get(&api, None),
        nginx.0.id(),
    )];
    rate_targets.extend(proxy_rate_targets(&matrix, &api, &hs));
    let at_rate = at_fixed_rate(&rate_targets, med[2].rps / 2.0, k);
    let flood = under_flood(p_hs, &required, &hs, k);
    let rss = rss_with_idle_connections(gw_pid, p_hs, 1000);
    let soak = soak(gw_pid, &required, &hs, soak_secs);

    let results = Results {
        cpu: (&matrix.targets, cpu_rows),
        names: targets.iter().map(|t| t.0).collect(),
        med,
        rss,
        new_upstream_per_1000,
        at_rate,
        flood,
        soak,
    };
    write_report(&results, k);
}
