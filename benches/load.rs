//! The side-by-side load harness: `cargo bench --bench load`.
//!
//! In one run it starts a fast upstream (nginx returning a fixed body), Portcullis (release
//! build) with HS256 and with EdDSA, and HAProxy verifying HS256 with the peer config, then
//! measures with `wrk`, alternating targets round by round and reporting medians:
//! the upstream direct, Portcullis on a public route, on a required route with HS256, with
//! EdDSA, and HAProxy. It also measures the gateway's RSS holding 1000 idle keep-alive
//! connections. The table goes to stdout and to `docs/PERFORMANCE.md` with the machine.
//!
//! Needs `nginx`, `haproxy` and `wrk` on PATH (Debian: nginx-light, haproxy, wrk); it says so
//! and exits non-zero when one is missing. Knobs (environment): `LOAD_SECONDS` (5),
//! `LOAD_ROUNDS` (3), `LOAD_CONNECTIONS` (64), `LOAD_THREADS` (2).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

fn start_portcullis(dir: &Path, name: &str, port: u16, upstream: u16, tokens: &str) -> Proc {
    let admin = free_port();
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
threads = 2
grace_period_secs = 0
[store]
url = "sqlite://{dir}/{name}.db"
{tokens}
[[upstream]]
name = "app"
addrs = ["127.0.0.1:{upstream}"]
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
    let bin = manifest().join("target/release/portcullis");
    let child = Command::new(bin)
        .args(["serve", "--config", conf.to_str().unwrap()])
        .env("LOAD_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("portcullis release binary (cargo build --release)");
    wait_port(port, "portcullis");
    Proc(child)
}

fn start_haproxy(dir: &Path, port: u16, upstream: u16) -> Proc {
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
        .env("HAP_THREADS", "2")
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
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
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
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            s.p50_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            s.non_2xx = v.trim().parse().unwrap_or(0);
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
    let rss = || -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    let before = rss();
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
    (before, rss(), conns.len())
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
            non_2xx: 0,
        })
        .collect()
}

fn write_report(names: &[&str], med: &[Sample], rss: (f64, f64, usize), k: Knobs) {
    let Knobs {
        secs,
        rounds,
        conns,
        threads,
    } = k;
    let (rss_before, rss_after, held) = rss;
    let mut table = String::new();
    let _ = writeln!(table, "| target | req/s (median) | p50 ms | p99 ms |");
    let _ = writeln!(table, "| --- | ---: | ---: | ---: |");
    for (name, s) in names.iter().zip(med) {
        let _ = writeln!(
            table,
            "| {name} | {:.0} | {:.3} | {:.3} |",
            s.rps, s.p50_ms, s.p99_ms
        );
    }
    let ratio = |a: usize, b: usize| med[a].rps / med[b].rps;
    let mut ratios = String::new();
    let _ = writeln!(ratios, "| ratio | measured | target |");
    let _ = writeln!(ratios, "| --- | ---: | --- |");
    let _ = writeln!(
        ratios,
        "| required HS256 / public | {:.3} | ≥ 0.95 |",
        ratio(2, 1)
    );
    let _ = writeln!(
        ratios,
        "| required HS256 / HAProxy jwt_verify | {:.3} | ≥ 1.0 |",
        ratio(2, 4)
    );
    let _ = writeln!(
        ratios,
        "| required EdDSA / public | {:.3} | — |",
        ratio(3, 1)
    );
    let _ = writeln!(
        ratios,
        "| public / upstream direct | {:.3} | — |",
        ratio(1, 0)
    );
    let _ = writeln!(
        ratios,
        "| p99 added over direct (required HS256, full load) | {:.3} ms | ≤ 1 ms at half load (not yet measured at a fixed rate) |",
        med[2].p99_ms - med[0].p99_ms
    );
    let _ = writeln!(
        ratios,
        "| RSS holding {held} idle keep-alive connections | {rss_after:.1} MiB (idle before: {rss_before:.1} MiB) | ≤ 64 MiB |"
    );
    let report = format!(
        "## Latest run\n\nMachine: {}. `wrk -t{threads} -c{conns} -d{secs}s`, {rounds} alternating rounds, medians; \
         every process (wrk, nginx, the gateways, HAProxy) shares the same cores.\n\n{table}\n{ratios}",
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
        "# Performance\n\nProduced by `cargo bench --bench load` (see `benches/load.rs`). Figures are ratios \
         measured side by side in one run; absolute numbers depend on the machine.\n"
            .to_owned()
    } else {
        kept
    };
    std::fs::write(&doc, format!("{preamble}\n\n{report}")).unwrap();
    eprintln!("wrote {}", doc.display());
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
    let secs = env_or("LOAD_SECONDS", 5);
    let rounds = env_or("LOAD_ROUNDS", 3);
    let conns = env_or("LOAD_CONNECTIONS", 64);
    let threads = env_or("LOAD_THREADS", 2);
    let status = Command::new("cargo")
        .args(["build", "--release", "--quiet"])
        .current_dir(manifest())
        .status()
        .expect("cargo");
    assert!(status.success(), "release build failed");

    let dir = tempfile::tempdir().unwrap();
    let (hs, ed) = tokens(dir.path());
    let up = free_port();
    let _nginx = start_nginx(dir.path(), up);
    let (p_hs, p_ed, p_hap) = (free_port(), free_port(), free_port());
    let gw_hs = start_portcullis(
        dir.path(),
        "hs",
        p_hs,
        up,
        "[tokens]\nsecret_env = \"LOAD_SECRET\"\n",
    );
    let ed_pem = manifest().join("tests/fixtures/keys/ed25519.pem");
    let _gw_ed = start_portcullis(
        dir.path(),
        "ed",
        p_ed,
        up,
        &format!(
            "[tokens]\nalgorithm = \"EdDSA\"\nprivate_key_file = \"{}\"\nkid = \"load\"\n",
            ed_pem.display()
        ),
    );
    let _hap = start_haproxy(dir.path(), p_hap, up);

    let api = format!("/api/{SUB}/tasks/1");
    let targets: Vec<(&str, String, Option<&str>)> = vec![
        (
            "upstream direct (nginx)",
            format!("http://127.0.0.1:{up}{api}"),
            None,
        ),
        (
            "portcullis public route",
            format!("http://127.0.0.1:{p_hs}/public/x"),
            None,
        ),
        (
            "portcullis required, HS256",
            format!("http://127.0.0.1:{p_hs}{api}"),
            Some(&hs),
        ),
        (
            "portcullis required, EdDSA",
            format!("http://127.0.0.1:{p_ed}{api}"),
            Some(&ed),
        ),
        (
            "haproxy jwt_verify HS256",
            format!("http://127.0.0.1:{p_hap}{api}"),
            Some(&hs),
        ),
    ];
    let knobs = Knobs {
        secs,
        rounds,
        conns,
        threads,
    };
    let med = measure(&targets, knobs);
    let (rss_before, rss_after, held) = rss_with_idle_connections(gw_hs.0.id(), p_hs, 1000);

    let names: Vec<&str> = targets.iter().map(|t| t.0).collect();
    write_report(&names, &med, (rss_before, rss_after, held), knobs);
}
