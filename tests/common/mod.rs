//! Shared helpers for the black-box tests: free ports, a gateway process under test, a
//! recording upstream, a raw HTTP/1.1 client and token minting.
//!
//! Everything here drives the `portcullis` binary from the outside; nothing reaches into the
//! crate's internals.

#![allow(dead_code)]

pub mod config;
pub mod db;
pub mod tls;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret every test gateway is started with (>= 32 bytes).
pub const SECRET: &str = "portcullis-test-secret-0123456789-abcdefghijkl";
/// The env var named by `tokens.secret_env` in the test configs.
pub const SECRET_ENV: &str = "PORTCULLIS_TEST_SECRET";
pub const ISSUER: &str = "portcullis";
pub const AUDIENCE: &str = "portcullis";
/// Cookie name used by the test configs (deliberately not the default).
pub const COOKIE: &str = "pc_tok";

const START_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// paths, ports
// ---------------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn keys_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/keys")
}

pub fn key_path(name: &str) -> String {
    keys_dir().join(name).to_string_lossy().into_owned()
}

pub fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(keys_dir().join(name)).unwrap_or_else(|e| panic!("fixture key {name}: {e}"))
}

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to :0, read, dropped). Never hands
/// out the same port twice within one test binary.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        drop(l);
        if handed_out().lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Whether process `pid` holds every socket listening on 127.0.0.1:`port` (`/proc/net/tcp`
/// against the socket inodes in `/proc/PID/fd`): false when another process listens there too
/// (Pingora binds with `SO_REUSEPORT`) or instead. Without `/proc`, no verdict: true.
fn listens_alone(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let local = format!("0100007F:{port:04X}");
    let listening: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9])
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let own: HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    !listening.is_empty() && listening.iter().all(|inode| own.contains(*inode))
}

/// An address where nothing listens.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// recording upstream (speaks the same JSON as `portcullis::demo::echo`)
// ---------------------------------------------------------------------------------------------

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// the raw request target
    pub path: String,
    /// every header line, in order, name as received
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn from_json(v: &Value) -> Seen {
        let headers = v["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("echo body without headers array: {v}"))
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_string(),
                    h[1].as_str().unwrap().to_string(),
                )
            })
            .collect();
        Seen {
            method: v["method"].as_str().unwrap_or_default().to_string(),
            path: v["path"].as_str().unwrap_or_default().to_string(),
            headers,
            body: v["body"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// All values of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of header `name` when it appears exactly once; panics when repeated.
    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "upstream saw {name} {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }

    /// Headers whose name, lower-cased with `_` read as `-`, starts with `x-user-`.
    pub fn identity_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(n, _)| {
                n.to_ascii_lowercase()
                    .replace('_', "-")
                    .starts_with("x-user-")
            })
            .cloned()
            .collect()
    }

    /// The cookies the upstream saw, across all Cookie headers, as (name, value).
    pub fn cookies(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for v in self.all("cookie") {
            for part in v.split(';') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (n, val) = part.split_once('=').unwrap_or((part, ""));
                out.push((n.trim().to_string(), val.trim().to_string()));
            }
        }
        out
    }
}

/// A test upstream: answers every request with 200 and the echo JSON, and records what it saw.
/// A request header `x-test-delay-ms: N` makes it wait N ms before answering;
/// `x-test-server-timing: V` makes it answer with `server-timing: V`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn spawn() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        handed_out().lock().unwrap().insert(addr.port());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&log2);
                thread::spawn(move || serve_echo(stream, &log));
            }
        });
        Upstream { addr, log }
    }

    /// Every request received, health probes included.
    pub fn all_requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Requests the gateway proxied: everything except a bare `GET /` without an
    /// X-Request-Id (what a load balancer's HTTP health probe looks like). No test proxies `/`.
    pub fn proxied(&self) -> Vec<Seen> {
        self.all_requests()
            .into_iter()
            .filter(|s| !(s.path == "/" && s.all("x-request-id").is_empty()))
            .collect()
    }

    pub fn proxied_count(&self) -> usize {
        self.proxied().len()
    }

    pub fn assert_not_called(&self) {
        let p = self.proxied();
        assert!(
            p.is_empty(),
            "the upstream must not have been called, but saw: {p:#?}"
        );
    }
}

fn serve_echo(stream: TcpStream, log: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            continue; // tolerate stray CRLF between requests
        }
        let mut parts = line.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            match reader.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.to_string(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                if size == 0 {
                    // trailers until empty line
                    loop {
                        let mut t = String::new();
                        if reader.read_line(&mut t).unwrap_or(0) == 0 || t.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                chunk.truncate(size);
                body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let delay = find("x-test-delay-ms").and_then(|v| v.parse::<u64>().ok());
        let seen = Seen {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let resp = echo_response(&seen, close);
        log.lock().unwrap().push(seen);
        if let Some(ms) = delay {
            thread::sleep(Duration::from_millis(ms));
        }
        if writer.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// The echo upstream's answer to `seen`: 200 with the echo JSON.
fn echo_response(seen: &Seen, close: bool) -> String {
    let payload = json!({
        "method": seen.method,
        "path": seen.path,
        "headers": seen.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
        "body": seen.body,
    })
    .to_string();
    let timing = seen
        .all("x-test-server-timing")
        .into_iter()
        .next()
        .map_or(String::new(), |t| format!("server-timing: {t}\r\n"));
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}{timing}\r\n{}",
        payload.len(),
        if close { "connection: close\r\n" } else { "" },
        payload
    )
}

/// An upstream that accepts connections, reads, and never answers.
pub fn spawn_hanging_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind hanging upstream");
    let addr = listener.local_addr().unwrap();
    handed_out().lock().unwrap().insert(addr.port());
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // keep reading (and holding the socket) until the peer gives up
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                thread::sleep(Duration::from_secs(60));
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// the gateway process
// ---------------------------------------------------------------------------------------------

/// Where a test gateway's stderr goes.
#[derive(Debug, Clone, Copy)]
enum Stderr {
    /// `stderr.log` in its directory ([`Gateway::stderr`]).
    File,
    /// A pipe nobody reads.
    UnreadPipe,
}

/// A running `portcullis serve`, killed on drop.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The recording upstream substituted for `{UPSTREAM}`, if the config used it.
    pub upstream: Option<Upstream>,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

/// Substitute the placeholders every test config may use.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

impl Gateway {
    /// Start a gateway from `config_toml`, substituting `{LISTEN}`, `{ADMIN}`, `{DIR}`, `{KEYS}`
    /// and `{UPSTREAM}` (a fresh recording upstream, spawned only when used).
    /// The HS256 test secret is always set in `SECRET_ENV`; `extra_env` adds or overrides.
    pub fn start(config_toml: &str, extra_env: &[(&str, &str)]) -> Gateway {
        Self::start_with(config_toml, extra_env, &[])
    }

    /// Like [`Gateway::start`], with stderr a pipe that nobody ever reads (a stalled log
    /// consumer); [`Gateway::stderr`] is then empty.
    pub fn start_with_unread_stderr(config_toml: &str) -> Gateway {
        let upstream = config_toml.contains("{UPSTREAM}").then(Upstream::spawn);
        Self::try_start(config_toml, &[], &[], upstream, Stderr::UnreadPipe)
            .unwrap_or_else(|e| panic!("gateway did not start:\n{e}"))
    }

    /// Like [`Gateway::start`], with extra placeholder values (`{NAME}` → value).
    pub fn start_with(
        config_toml: &str,
        extra_env: &[(&str, &str)],
        vars: &[(&str, String)],
    ) -> Gateway {
        let upstream = config_toml.contains("{UPSTREAM}").then(Upstream::spawn);
        let mut last_err = String::new();
        for _attempt in 0..2 {
            match Self::try_start(config_toml, extra_env, vars, upstream.clone(), Stderr::File) {
                Ok(g) => return g,
                Err(e) => last_err = e,
            }
        }
        panic!("gateway did not start (twice):\n{last_err}");
    }

    fn try_start(
        config_toml: &str,
        extra_env: &[(&str, &str)],
        vars: &[(&str, String)],
        upstream: Option<Upstream>,
        stderr_to: Stderr,
    ) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        // The caller's values first: they may themselves hold `{DIR}` and the like.
        let mut all_vars: Vec<(&str, String)> = vars.to_vec();
        all_vars.extend([
            ("LISTEN", listen.to_string()),
            ("ADMIN", admin.to_string()),
            ("DIR", dir.path().to_string_lossy().into_owned()),
            ("KEYS", keys_dir().to_string_lossy().into_owned()),
        ]);
        if let Some(u) = &upstream {
            all_vars.push(("UPSTREAM", u.addr.to_string()));
        }
        let config = render(config_toml, &all_vars);
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, &config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = match stderr_to {
            Stderr::File => Stdio::from(std::fs::File::create(&stderr_path).expect("stderr file")),
            // Held by the child handle, never read.
            Stderr::UnreadPipe => Stdio::piped(),
        };
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");

        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|e| format!("spawn {}: {e}", bin()))?;
        let mut gw = Gateway {
            addr: listen,
            admin,
            upstream,
            dir,
            child: Some(child),
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                gw.child = None;
                return Err(format!(
                    "portcullis serve exited early with {status}\nconfig:\n{config}\nstderr:\n{}",
                    gw.stderr()
                ));
            }
            let healthy = try_get(admin, "/healthz").is_ok_and(|r| r.status == 200);
            if healthy && TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
                // The listen port was free when `free_port` dropped it, but another test's
                // listener (an upstream bound to port 0) can take it before the gateway binds
                // it; the gateway then fails to bind and may still be alive a beat later while
                // the test talks to that listener (seen in CI: one test's request reached
                // another test's upstream).
                let pid = gw.child.as_ref().unwrap().id();
                if !listens_alone(pid, listen.port()) {
                    return Err(format!(
                        "{listen} is held by another listener (port collision)\nconfig:\n{config}"
                    ));
                }
                // Ours holds the port; make sure it is still alive after a beat (a gateway that
                // exits right after binding, for any reason, is a failed start too).
                thread::sleep(Duration::from_millis(50));
                if gw.child.as_mut().unwrap().try_wait().unwrap().is_none() {
                    return Ok(gw);
                }
                continue;
            }
            if Instant::now() > deadline {
                let err = format!(
                    "portcullis serve not healthy on {admin} within {START_TIMEOUT:?}\nconfig:\n{config}\nstderr:\n{}",
                    gw.stderr()
                );
                return Err(err); // Drop kills it
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (at most `within`) for `/readyz` to answer 200 and returns that answer; `what`
    /// says in the failure why it should have.
    #[track_caller]
    pub fn wait_ready(&self, within: Duration, what: &str) -> Response {
        let deadline = Instant::now() + within;
        loop {
            let r = get(self.admin, "/readyz", &[]);
            if r.status == 200 {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: readyz {} {}",
                r.status,
                r.text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The upstream substituted for `{UPSTREAM}`.
    pub fn up(&self) -> &Upstream {
        self.upstream
            .as_ref()
            .expect("config did not use {UPSTREAM}")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway not running").id()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(self.addr, path, headers)
    }

    pub fn raw(&self, bytes: &[u8]) -> Response {
        send_raw(self.addr, bytes)
    }

    /// Send SIGTERM and wait up to `bound` for the process to exit.
    pub fn terminate(&mut self, bound: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + bound;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if thread::panicking() {
            // A failing test shows what its gateway said: the one clue a flaky failure leaves.
            let log = self.stderr();
            let mut from = log.len().saturating_sub(8192);
            while !log.is_char_boundary(from) {
                from += 1;
            }
            let tail = &log[from..];
            eprintln!(
                "--- the gateway on {} said (last 8 KiB of stderr) ---\n{tail}",
                self.addr
            );
        }
        if self.child.is_some()
            && self.terminate(Duration::from_millis(500)).is_none()
            && let Some(mut c) = self.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The request as the upstream saw it (parses the echo body).
    pub fn seen(&self) -> Seen {
        assert_eq!(
            self.status,
            200,
            "expected a proxied 200, got {}: {}",
            self.status,
            self.text()
        );
        Seen::from_json(&self.json())
    }

    pub fn request_id(&self) -> Option<&str> {
        self.header("x-request-id")
    }
}

/// Write exactly `bytes` to `addr` and read one response. Panics on I/O errors or time-outs.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    try_send_raw(addr, bytes).unwrap_or_else(|e| {
        panic!(
            "request to {addr} failed: {e}\nrequest: {:?}",
            String::from_utf8_lossy(bytes)
        )
    })
}

pub fn try_send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(bytes).map_err(|e| format!("write: {e}"))?;
    read_response(&mut s)
}

#[allow(clippy::too_many_lines)]
pub fn read_response(s: &mut TcpStream) -> Result<Response, String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut tmp)
            .map_err(|e| format!("read head: {e} (got {:?})", String::from_utf8_lossy(&buf)))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a full response head (got {:?})",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let hv = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if hv("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                let n = s
                    .read(&mut tmp)
                    .map_err(|e| format!("read chunk size: {e}"))?;
                if n == 0 {
                    return Err("eof in chunked body".into());
                }
                rest.extend_from_slice(&tmp[..n]);
            };
            let size_str = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| format!("bad chunk size {size_str:?}: {e}"))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            while rest.len() < size + 2 {
                let n = s.read(&mut tmp).map_err(|e| format!("read chunk: {e}"))?;
                if n == 0 {
                    return Err("eof in chunk".into());
                }
                rest.extend_from_slice(&tmp[..n]);
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else if let Some(len) = hv("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut tmp).map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                return Err(format!("eof after {} of {len} body bytes", rest.len()));
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        loop {
            match s.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => rest.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(format!("read body to eof: {e}")),
            }
        }
        rest
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Build a `GET` request with `Connection: close`.
pub fn request_bytes(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (n, v) in headers {
        let _ = write!(req, "{n}: {v}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(req, "Content-Length: {}\r\n", b.len());
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    send_raw(addr, &request_bytes("GET", path, headers, None))
}

pub fn try_get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&request_bytes("GET", path, &[], None))
        .map_err(|e| e.to_string())?;
    read_response(&mut s)
}

// ---------------------------------------------------------------------------------------------
// tokens
// ---------------------------------------------------------------------------------------------

pub fn new_sub() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Standard valid claims for `sub`: email, iat, exp (+10 min), jti, iss, aud.
pub fn claims(sub: &str) -> Value {
    let iat = now();
    json!({
        "sub": sub,
        "email": format!("{}@example.test", &sub[..8.min(sub.len())]),
        "iat": iat,
        "exp": iat + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
        "iss": ISSUER,
        "aud": AUDIENCE,
    })
}

/// `claims` with `f` applied.
pub fn claims_with(sub: &str, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims(sub);
    f(c.as_object_mut().unwrap());
    c
}

pub fn hs256_with(secret: &[u8], claims: &Value, kid: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("encode HS256")
}

/// HS256 with the test secret.
pub fn hs256(claims: &Value) -> String {
    hs256_with(SECRET.as_bytes(), claims, None)
}

/// A valid HS256 token for `sub` with the standard claims.
pub fn token_for(sub: &str) -> String {
    hs256(&claims(sub))
}

/// Sign with an asymmetric fixture key (`ed25519.pem`, `p256.pem`, `rsa.pem`, ...).
pub fn sign_pem(alg: Algorithm, pem_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = read_key(pem_file);
    let key = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap_or_else(|e| panic!("load {pem_file}: {e}"));
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key).expect("encode")
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `alg: none` with an empty signature.
pub fn alg_none(claims: &Value) -> String {
    let h = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let p = b64url(claims.to_string().as_bytes());
    format!("{h}.{p}.")
}

/// A token with hand-written header JSON, HMAC-signed with `secret` (to forge odd headers).
pub fn hs256_raw_header(header_json: &str, claims: &Value, secret: &[u8]) -> String {
    let h = b64url(header_json.as_bytes());
    let p = b64url(claims.to_string().as_bytes());
    let msg = format!("{h}.{p}");
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("hmac sign");
    format!("{msg}.{sig}")
}

/// Change one character in the middle of the signature.
pub fn tamper_signature(token: &str) -> String {
    let (msg, sig) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{msg}.{}", sig.into_iter().collect::<String>())
}

/// Keep header and signature, replace the payload (e.g. with another user's sub).
pub fn swap_payload(token: &str, claims: &Value) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let p = b64url(claims.to_string().as_bytes());
    parts[1] = &p;
    parts.join(".")
}

/// A correctly signed HS256 token longer than 8192 bytes.
pub fn oversized_token(sub: &str) -> String {
    let t = hs256(&claims_with(sub, |c| {
        c.insert("pad".into(), Value::String("x".repeat(9000)));
    }));
    assert!(t.len() > 8192);
    t
}

/// The raw 32-byte Ed25519 public key from a SPKI PEM file.
pub fn ed25519_raw_public(pub_pem_file: &str) -> Vec<u8> {
    let pem = String::from_utf8(read_key(pub_pem_file)).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD.decode(b64.trim()).unwrap();
    der[der.len() - 32..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// assertions
// ---------------------------------------------------------------------------------------------

/// A gateway-made problem+json with this status and code, carrying an X-Request-Id.
#[track_caller]
pub fn assert_problem(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "status; body: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.to_ascii_lowercase()
            .starts_with("application/problem+json"),
        "content-type must be application/problem+json, got {ct:?} (body {})",
        r.text()
    );
    let v = r.json();
    assert_eq!(v["code"], code, "problem code; body: {v}");
    assert_eq!(v["status"], status, "problem status field; body: {v}");
    assert!(v["type"].is_string(), "problem type missing: {v}");
    assert!(v["title"].is_string(), "problem title missing: {v}");
    assert!(v["detail"].is_string(), "problem detail missing: {v}");
    assert!(
        r.request_id().is_some_and(|id| !id.is_empty()),
        "x-request-id missing on {status}"
    );
    v
}

/// 401 with this code and the RFC 6750 challenge.
#[track_caller]
pub fn assert_401(r: &Response, code: &str, token_presented: bool) {
    assert_problem(r, 401, code);
    let challenges = r.headers_all("www-authenticate");
    assert_eq!(
        challenges.len(),
        1,
        "exactly one WWW-Authenticate: {challenges:?}"
    );
    let c = challenges[0];
    assert!(c.starts_with("Bearer "), "challenge scheme: {c:?}");
    assert!(
        c.contains(r#"realm="portcullis""#),
        "challenge realm: {c:?}"
    );
    if token_presented {
        assert!(
            c.contains(r#"error="invalid_token""#),
            "challenge must carry error=\"invalid_token\": {c:?}"
        );
    } else {
        assert!(
            !c.contains("error="),
            "no error attribute without a token: {c:?}"
        );
    }
}

/// The body does not echo the token or any part of it.
#[track_caller]
pub fn assert_no_token_echo(r: &Response, token: &str) {
    let body = r.text();
    let headers = r.headers.iter().fold(String::new(), |mut acc, (n, v)| {
        let _ = writeln!(acc, "{n}: {v}");
        acc
    });
    for part in token.split('.').filter(|p| p.len() >= 8) {
        let probe = &part[..part.len().min(40)];
        assert!(
            !body.contains(probe),
            "response body echoes the token: {body}"
        );
        assert!(
            !headers.contains(probe),
            "response headers echo the token: {headers}"
        );
    }
}

/// The upstream saw no identity headers except, when `identity` is given, exactly one
/// X-User-Id and at most one X-User-Email with the token's values.
#[track_caller]
pub fn assert_identity(seen: &Seen, identity: Option<(&str, Option<&str>)>) {
    let ids = seen.identity_headers();
    match identity {
        None => assert!(
            ids.is_empty(),
            "upstream must see no x-user-* header, saw {ids:?}"
        ),
        Some((sub, email)) => {
            let expected: usize = 1 + usize::from(email.is_some());
            assert_eq!(
                ids.len(),
                expected,
                "identity headers seen by upstream: {ids:?}"
            );
            let id: Vec<_> = ids
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-user-id"))
                .collect();
            assert_eq!(id.len(), 1, "exactly one X-User-Id: {ids:?}");
            assert_eq!(id[0].1, sub, "X-User-Id must be the token's sub");
            let em: Vec<_> = ids
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-user-email"))
                .collect();
            match email {
                Some(e) => {
                    assert_eq!(em.len(), 1, "exactly one X-User-Email: {ids:?}");
                    assert_eq!(em[0].1, e, "X-User-Email must be the token's email");
                }
                None => assert!(
                    em.is_empty(),
                    "no X-User-Email without an email claim: {ids:?}"
                ),
            }
        }
    }
}

pub fn email_of(claims: &Value) -> String {
    claims["email"].as_str().unwrap().to_string()
}

/// Run `portcullis <args>` to completion within `bound`; returns (status, stdout, stderr).
pub fn run_bin(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    bound: Duration,
) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("DATABASE_URL")
        .env_remove(SECRET_ENV)
        .env_remove("BETTER_AUTH_SECRET")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn portcullis");
    let deadline = Instant::now() + bound;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "portcullis {args:?} did not exit within {bound:?}\nstderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

/// A JWKS server at `http://127.0.0.1:<port>/jwks` publishing `ed25519.pub.pem` as `kid`
/// (EdDSA): its URL and how many fetches it has answered.
pub fn ed25519_jwks_server(kid: &str) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let fetches = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&fetches);
    let x = b64url(&ed25519_raw_public("ed25519.pub.pem"));
    let body =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": x}]})
            .to_string();
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, fetches)
}
