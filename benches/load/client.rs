//! Load that `wrk` cannot make: a fixed request rate (open loop, wrk2-style) for latency at a
//! given load, and a sign-in flood. Both use plain keep-alive HTTP/1.1 over blocking sockets,
//! one OS thread per connection, so the generator's own cost is small and predictable.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One keep-alive connection that sends a fixed request and reads whole responses.
struct Conn {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(port: u16) -> Self {
        Self {
            port,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and returns the response status, reconnecting once if the kept-alive
    /// connection was closed. `None` is a transport error.
    fn exchange(&mut self, request: &[u8]) -> Option<u16> {
        for _ in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
                s.set_nodelay(true).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
                self.stream = Some(s);
            }
            match self.once(request) {
                Some(status) => return Some(status),
                None => self.stream = None,
            }
        }
        None
    }

    fn once(&mut self, request: &[u8]) -> Option<u16> {
        let s = self.stream.as_mut()?;
        s.write_all(request).ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = res.parse(&self.buf) {
                let len = res
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                let close = res.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                });
                let status = res.code?;
                while self.buf.len() < head + len {
                    let n = s.read(&mut chunk).ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                if close {
                    self.stream = None;
                }
                return Some(status);
            }
        }
    }
}

/// A GET request with an optional bearer token.
pub fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes()
}

/// What a fixed-rate run saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateSample {
    pub sent_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// The proxy's threads' run-queue wait per request (µs), and per time slice it ran.
    pub wait_us: f64,
    pub wait_per_slice_us: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// Sends `rate` requests per second for `secs` over `conns` keep-alive connections, each on its
/// own schedule. Latency counts from when a request was due, not when it went out, so a stall
/// is charged to every request it delayed (no coordinated omission).
pub fn fixed_rate(port: u16, request: &[u8], rate: f64, secs: u64, conns: usize) -> RateSample {
    #[allow(clippy::cast_precision_loss)]
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let request = request.to_vec();
            #[allow(clippy::cast_precision_loss)]
            let first = start + interval.mul_f64(i as f64 / conns as f64);
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut due = first;
                while due < end {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    match conn.exchange(&request) {
                        Some(s) if (200..400).contains(&s) => {
                            lat.push(due.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                    due += interval;
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, e) = t.join().expect("load thread");
        all.extend(lat);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let sent = (all.len() as u64 + errors) as f64 / secs as f64;
    RateSample {
        sent_per_sec: sent,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        errors,
        wait_us: 0.0,
        wait_per_slice_us: 0.0,
    }
}

/// What the sign-in flood got back.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub secs: f64,
    /// Answers by status (200, 401, 429, 503, ...); 0 = transport error.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Latency of the refusals (429 / 503), milliseconds.
    pub refusal_p50_ms: f64,
    pub refusal_p99_ms: f64,
}

/// What one flood thread saw: (status, milliseconds) per answer, and transport errors.
type FloodThread = (Vec<(u16, f64)>, u64);

/// A running sign-in flood: `rate` wrong-password sign-ins per second (unknown emails, so each
/// would cost a full bcrypt verification) until stopped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<FloodThread>>,
    started: Instant,
}

impl Flood {
    pub fn start(port: u16, rate: f64, conns: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        #[allow(clippy::cast_precision_loss)]
        let interval = Duration::from_secs_f64(conns as f64 / rate);
        let started = Instant::now();
        let threads = (0..conns)
            .map(|i| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut conn = Conn::new(port);
                    let mut seen = Vec::new();
                    let mut n = 0u64;
                    let mut due = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let body =
                            format!(r#"{{"email":"flood-{i}-{n}@example.com","password":"wrong-password-{n}"}}"#);
                        let req = format!(
                            "POST /api/v1/auth/signin HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let t = Instant::now();
                        let status = conn.exchange(req.as_bytes()).unwrap_or(0);
                        seen.push((status, t.elapsed().as_secs_f64() * 1000.0));
                        n += 1;
                        due += interval;
                    }
                    (seen, n)
                })
            })
            .collect();
        Self {
            stop,
            threads,
            started,
        }
    }

    pub fn finish(self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = FloodReport {
            secs: self.started.elapsed().as_secs_f64(),
            ..FloodReport::default()
        };
        let mut refusals = Vec::new();
        for t in self.threads {
            let (seen, n) = t.join().expect("flood thread");
            report.sent += n;
            for (status, ms) in seen {
                *report.statuses.entry(status).or_default() += 1;
                if status == 429 || status == 503 {
                    refusals.push(ms);
                }
            }
        }
        refusals.sort_by(f64::total_cmp);
        report.refusal_p50_ms = percentile(&refusals, 0.50);
        report.refusal_p99_ms = percentile(&refusals, 0.99);
        report
    }
}

/// The median time of one sign-in that reaches bcrypt, with nothing else going on.
pub fn signin_ms(port: u16, samples: usize) -> f64 {
    let mut conn = Conn::new(port);
    let mut times: Vec<f64> = (0..samples)
        .map(|n| {
            let body = format!(r#"{{"email":"probe-{n}@example.com","password":"wrong-password"}}"#);
            let req = format!(
                "POST /api/v1/auth/signin HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let t = Instant::now();
            let status = conn.exchange(req.as_bytes());
            assert_eq!(status, Some(401), "a probe sign-in should be refused with 401");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
