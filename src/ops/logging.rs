//! Logs: one line per event on stderr, JSON (for log shippers) or pretty (for a person at a
//! terminal: timestamp, level, message, fields; no module paths, no colours, control characters
//! escaped so that no value can forge a line), filtered by `RUST_LOG` (default `info`), written
//! by a thread of their own. `server.log_format` picks; without it a terminal gets pretty and
//! anything else JSON. A worker thread appends each line to a bounded in-memory buffer and goes on; it
//! never waits for stderr (a slow terminal, a full pipe, a stalled log shipper). When the buffer
//! is full the line is dropped and counted (`portcullis_log_lines_dropped_total`): under overload
//! the gateway keeps serving and says how much it did not log.
//!
//! The writer thread is not woken per line. It sleeps on a condition variable only when the
//! buffer is empty (the first line after that wakes it, so an idle gateway's line goes out at
//! once); after each write it pauses [`BATCH_PAUSE`] and then takes everything queued meanwhile
//! in one `write`. Under load that is one wake-up and one system call per hundreds of lines,
//! where a channel (tracing-appender's) cost a wake-up, a spin and a `futex` per line: a fifth
//! of the process's CPU (docs/PERFORMANCE.md, optimisation 11).
//!
//! The access line, one per request, does not go through `tracing`'s formatter: [`Access`]
//! writes the same JSON shape straight into a per-thread buffer and queues it (optimisation 16),
//! behind the same `RUST_LOG` filter (target `access`, level info).

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// Bytes the buffer holds before new lines are dropped: about 8000 access lines.
pub const QUEUE_BYTES: usize = 2 * 1024 * 1024;

/// How long the writer lets lines gather after a write before it takes the next batch: the
/// most a line waits under load, and the fewest writes per second it makes then.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// How long the end of the process waits for the last lines to be written (a stalled stderr
/// must not hold up a shutdown).
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// Pingora's crates log whole request headers at debug (a forwarded Bearer token among them):
/// they never go below info, whatever `RUST_LOG` asks.
const PINGORA_CLAMPS: [&str; 4] = [
    "pingora_proxy=info",
    "pingora_core=info",
    "pingora_http=info",
    "pingora_load_balancing=info",
];

/// The buffer between the threads that log and the thread that writes.
#[derive(Debug, Default)]
struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer sleeps on `wake` and needs a notification to see new lines.
    writer_asleep: bool,
    /// No more lines: the writer writes what is left and ends.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one whole line; false when it does not fit (it is dropped).
    fn push(&self, line: &[u8]) -> bool {
        let mut p = self.lock();
        if p.bytes.len() + line.len() > QUEUE_BYTES {
            return false;
        }
        p.bytes.extend_from_slice(line);
        let wake = std::mem::take(&mut p.writer_asleep);
        drop(p);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// The writer's loop: waits for lines, writes each batch in one go, ends when closed.
    fn drain(&self, out: &mut dyn Write) {
        let mut batch = Vec::new();
        loop {
            let mut p = self.lock();
            while p.bytes.is_empty() && !p.closed {
                p.writer_asleep = true;
                p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            p.writer_asleep = false;
            std::mem::swap(&mut p.bytes, &mut batch);
            let closing = p.closed;
            drop(p);
            if closing && batch.is_empty() {
                return;
            }
            // A failed write (stderr closed) loses the batch, never the process.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            // Keep the batch's allocation unless a burst made it large.
            if batch.capacity() > 256 * 1024 {
                batch = Vec::new();
            }
            if !closing {
                std::thread::sleep(BATCH_PAUSE);
            }
        }
    }

    fn close(&self) {
        let mut p = self.lock();
        p.closed = true;
        p.writer_asleep = false;
        drop(p);
        self.wake.notify_one();
    }
}

/// The logger's writer: hands out a borrowed [`Line`] per event (no reference count touched).
#[derive(Debug)]
struct LineWriter(Arc<Queue>, Style);

/// What `tracing` writes one formatted line into (one `write_all` per event); a line that
/// does not fit is counted in `portcullis_log_lines_dropped_total`.
#[derive(Debug)]
struct Line<'a>(&'a Queue, Style);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let pushed = match self.1 {
            // JSON escapes every control character itself.
            Style::Json => self.0.push(line),
            Style::Pretty => self.0.push(&one_line(line)),
        };
        if !pushed {
            super::metrics::LOG_LINES_DROPPED.inc();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0, self.1)
    }
}

/// How lines look (`server.log_format`, decided once by [`init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Json,
    Pretty,
}

/// A pretty line with every control character but its final newline escaped (`\n`, `\u{1b}`):
/// a value holding a newline or a terminal escape stays inside its line.
fn one_line(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if !body.iter().any(u8::is_ascii_control) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for &b in body {
        if b.is_ascii_control() {
            out.extend(std::ascii::escape_default(b));
        } else {
            out.push(b);
        }
    }
    out.push(b'\n');
    std::borrow::Cow::Owned(out)
}

/// The queue access lines go to, and their style: the process logger's, once [`init`] has run.
static ACCESS_QUEUE: OnceLock<(Arc<Queue>, Style)> = OnceLock::new();

/// One request's access line. Never the token, the cookie or the query string: only what
/// identifies the request. Absent fields are left out, as `tracing` leaves out a `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access<'a> {
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub latency_us: u64,
    pub user_id: Option<&'a str>,
    pub code: Option<&'a str>,
    pub error: Option<&'a str>,
}

thread_local! {
    /// Each worker thread's line buffer, and the second its timestamp prefix was made for.
    static ACCESS_LINE: RefCell<(Vec<u8>, u64, [u8; 19])> =
        const { RefCell::new((Vec::new(), u64::MAX, [0; 19])) };
}

impl Access<'_> {
    /// Queues the line when `RUST_LOG` lets `access` info through (one cached look-up).
    pub fn log(&self) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let Some((queue, style)) = ACCESS_QUEUE.get() else {
            return;
        };
        ACCESS_LINE.with_borrow_mut(|(line, second, prefix)| {
            line.clear();
            match style {
                Style::Json => self.write(line, SystemTime::now(), second, prefix),
                Style::Pretty => {
                    self.write_pretty(line, SystemTime::now(), second, prefix);
                    let escaped = one_line(line).into_owned();
                    *line = escaped;
                }
            }
            if !queue.push(line) {
                super::metrics::LOG_LINES_DROPPED.inc();
            }
        });
    }

    /// The line `tracing_subscriber`'s JSON format writes for the same event:
    /// `{"timestamp":…,"level":"INFO","fields":{…},"target":"access"}` and a newline.
    fn write(&self, out: &mut Vec<u8>, now: SystemTime, second: &mut u64, prefix: &mut [u8; 19]) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != *second {
            *second = since.as_secs();
            *prefix = rfc3339_second(*second);
        }
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(prefix);
        let _ = write!(
            out,
            ".{:06}Z\",\"level\":\"INFO\",\"fields\":{{",
            since.subsec_micros()
        );
        let mut f = Fields { out, first: true };
        f.text("request_id", self.request_id);
        f.text("method", Some(self.method));
        f.text("route", self.route);
        f.number("status", self.status.into());
        f.number("latency_us", self.latency_us);
        f.text("user_id", self.user_id);
        f.text("code", self.code);
        f.text("error", self.error);
        let out = f.out;
        out.extend_from_slice(b"},\"target\":\"access\"}\n");
    }
}

impl Access<'_> {
    /// The pretty line: `2026-12-07T09:50:01.123456Z  INFO GET /api/{*rest} 200 1.234 ms
    /// user_id=… request_id=…` (the same fields as the JSON line).
    fn write_pretty(
        &self,
        out: &mut Vec<u8>,
        now: SystemTime,
        second: &mut u64,
        prefix: &mut [u8; 19],
    ) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != *second {
            *second = since.as_secs();
            *prefix = rfc3339_second(*second);
        }
        out.extend_from_slice(prefix);
        let _ = write!(
            out,
            ".{:06}Z  INFO {} {} {} {}.{:03} ms",
            since.subsec_micros(),
            self.method,
            self.route.unwrap_or("-"),
            self.status,
            self.latency_us / 1000,
            self.latency_us % 1000,
        );
        for (name, value) in [
            ("user_id", self.user_id),
            ("code", self.code),
            ("error", self.error),
            ("request_id", self.request_id),
        ] {
            if let Some(value) = value {
                let _ = write!(out, " {name}={value}");
            }
        }
        out.push(b'\n');
    }
}

/// The `fields` object of an access line, written field by field.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, name: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn text(&mut self, name: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.key(name);
            // Escaped as serde_json escapes; writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *self.out, value);
        }
    }

    fn number(&mut self, name: &str, value: u64) {
        self.key(name);
        let _ = write!(self.out, "{value}");
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a second since the epoch: days to a civil date by Howard
/// Hinnant's `civil_from_days`, as `tracing_subscriber` formats it.
fn rfc3339_second(secs: u64) -> [u8; 19] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Shifted to 0000-03-01 so that a leap day ends its year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            // A digit: v % 10 < 10.
            out[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out
}

/// Starts the writer thread over `out`; the guard ends it.
fn start(out: impl Write + Send + 'static, style: Style) -> (LineWriter, LogGuard) {
    let queue = Arc::new(Queue::default());
    let (done_tx, done) = std::sync::mpsc::channel();
    let q = Arc::clone(&queue);
    let mut out = out;
    let spawned = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(move || {
            q.drain(&mut out);
            let _ = done_tx.send(());
        });
    (
        LineWriter(Arc::clone(&queue), style),
        LogGuard {
            queue,
            done,
            started: spawned.is_ok(),
        },
    )
}

/// Writes the queued lines when dropped (waiting at most [`FLUSH_AT_EXIT`]): keep it until
/// the process ends.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    queue: Arc<Queue>,
    done: std::sync::mpsc::Receiver<()>,
    started: bool,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.queue.close();
        if self.started {
            let _ = self.done.recv_timeout(FLUSH_AT_EXIT);
        }
    }
}

/// Installs the process's logger in `format` (`None`: pretty when stderr is a terminal, JSON
/// otherwise). Once; later calls change nothing and return a guard of a writer never used.
pub fn init(format: Option<LogFormat>) -> LogGuard {
    use std::io::IsTerminal as _;
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for clamp in PINGORA_CLAMPS {
        filter = filter.add_directive(clamp.parse().expect("static directive"));
    }
    let pretty = format.map_or_else(
        || std::io::stderr().is_terminal(),
        |f| f == LogFormat::Pretty,
    );
    let style = if pretty { Style::Pretty } else { Style::Json };
    let (writer, guard) = start(std::io::stderr(), style);
    let _ = ACCESS_QUEUE.set((Arc::clone(&writer.0), style));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match style {
        Style::Json => builder.json().with_current_span(false).try_init(),
        Style::Pretty => builder.with_target(false).with_ansi(false).try_init(),
    };
    guard
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::QUEUE_BYTES;

    /// A writer that blocks until the test lets it go: stderr stalled.
    struct Stalled(Arc<AtomicBool>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            while !self.0.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer that records every `write` call.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// What `tracing_subscriber`'s JSON format writes for the event the access line replaced.
    fn tracing_line(a: &super::Access<'_>) -> String {
        let out = Recorder::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || sink.clone())
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access",
                request_id = a.request_id,
                method = %a.method,
                route = a.route,
                status = a.status,
                latency_us = a.latency_us,
                user_id = a.user_id,
                code = a.code,
                error = a.error,
            );
        });
        String::from_utf8(out.0.lock().unwrap().concat()).unwrap()
    }

    fn own_line(a: &super::Access<'_>) -> String {
        let mut line = Vec::new();
        let (mut second, mut prefix) = (u64::MAX, [0; 19]);
        a.write(
            &mut line,
            std::time::SystemTime::now(),
            &mut second,
            &mut prefix,
        );
        String::from_utf8(line).unwrap()
    }

    /// The line without its timestamp's value, which two calls cannot share.
    fn untimed(line: &str) -> (String, String) {
        let (head, rest) = line.split_at(line.find("\",\"level\"").unwrap());
        (
            head.trim_start_matches("{\"timestamp\":\"").to_owned(),
            rest.to_owned(),
        )
    }

    #[test]
    fn the_access_line_is_the_line_tracing_wrote_byte_for_byte_but_the_time() {
        let full = super::Access {
            request_id: Some("req-1"),
            method: "GET",
            route: Some("/api/{user_id}/{*rest}"),
            status: 200,
            latency_us: 1234,
            user_id: Some("5f0c3c9e-4d7a-4a43-9c1e-0b8f1f2d3e4a"),
            code: None,
            error: None,
        };
        let hostile = super::Access {
            request_id: None,
            method: "PROPFIND",
            route: None,
            status: 401,
            latency_us: u64::MAX,
            // An external issuer's `sub` is any string: quotes, controls, non-ASCII.
            user_id: Some("a\"b\\c\n\u{1}\u{7f}é😀</script>"),
            code: Some("invalid_token"),
            error: Some("ConnectRefused"),
        };
        let bare = super::Access {
            method: "GET",
            ..super::Access::default()
        };
        for a in [full, hostile, bare] {
            let (ours, theirs) = (own_line(&a), tracing_line(&a));
            assert!(
                ours.ends_with('\n') && ours.matches('\n').count() == 1,
                "{ours}"
            );
            let (our_time, our_rest) = untimed(&ours);
            let (their_time, their_rest) = untimed(&theirs);
            assert_eq!(our_rest, their_rest);
            assert_eq!(
                our_time.len(),
                their_time.len(),
                "{our_time} / {their_time}"
            );
            // Both read the clock within this test: the same day, the same shape.
            assert_eq!(our_time[..10], their_time[..10]);
            let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(v["target"], "access");
        }
    }

    #[test]
    fn the_pretty_access_line_is_one_readable_line_whatever_its_values_hold() {
        let a = super::Access {
            request_id: Some("req-1"),
            method: "GET",
            route: Some("/api/{user_id}/{*rest}"),
            status: 200,
            latency_us: 1234,
            user_id: Some("u\n2026-12-07T00:00:00Z  INFO forged\u{1b}[2J"),
            code: None,
            error: None,
        };
        let mut out = Vec::new();
        a.write_pretty(
            &mut out,
            std::time::SystemTime::now(),
            &mut u64::MAX.clone(),
            &mut [0; 19],
        );
        let line = String::from_utf8(super::one_line(&out).into_owned()).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(!line.contains('\u{1b}'), "{line}");
        let after_time = line.split_once("Z  ").unwrap().1;
        assert!(
            after_time.starts_with("INFO GET /api/{user_id}/{*rest} 200 1.234 ms user_id=u\\n2026"),
            "{line}"
        );
        assert!(line.trim_end().ends_with("request_id=req-1"), "{line}");
        // A line without controls passes as it is.
        assert!(matches!(
            super::one_line(b"plain\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn timestamps_are_utc_civil_dates_across_leap_years_and_centuries() {
        assert_eq!(&super::rfc3339_second(0), b"1970-01-01T00:00:00");
        assert_eq!(&super::rfc3339_second(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(
            &super::rfc3339_second(4_107_542_399),
            b"2100-02-28T23:59:59"
        );
        assert_eq!(
            &super::rfc3339_second(4_107_542_400),
            b"2100-03-01T00:00:00"
        );
        // Every day from 1970 to 2200 against a plain day-by-day count.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for day in 0..84_000u64 {
            let expect = format!("{y:04}-{m:02}-{d:02}T23:59:58");
            let got = super::rfc3339_second(day * 86_400 + 86_398);
            assert_eq!(std::str::from_utf8(&got).unwrap(), expect);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[usize::try_from(m - 1).unwrap()] {
                (d, m) = (1, m + 1);
                if m > 12 {
                    (m, y) = (1, y + 1);
                }
            }
        }
    }

    #[test]
    fn a_stalled_stderr_never_blocks_the_caller_and_drops_are_counted() {
        let release = Arc::new(AtomicBool::new(false));
        let (writer, guard) = super::start(Stalled(Arc::clone(&release)), super::Style::Json);
        let mut writer = super::Line(&writer.0, super::Style::Json);
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        let before = super::super::metrics::LOG_LINES_DROPPED.get();
        let started = Instant::now();
        // Twice what the buffer holds, against a writer stuck on its first write.
        let lines = 2 * QUEUE_BYTES / line.len();
        for _ in 0..lines {
            writer.write_all(&line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the caller waited"
        );
        let dropped = super::super::metrics::LOG_LINES_DROPPED.get() - before;
        // What the buffer took, plus at most the lines the writer had taken before it stuck.
        let kept = QUEUE_BYTES / line.len();
        assert!(
            (lines - 2 * kept..=lines - kept).contains(&usize::try_from(dropped).unwrap()),
            "{dropped} of {lines} dropped"
        );
        let text = String::from_utf8(super::super::metrics::render()).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with("portcullis_log_lines_dropped_total ")),
            "the counter is exposed"
        );
        // Let the writer go so that dropping the guard can end it.
        release.store(true, Ordering::SeqCst);
        drop(guard);
    }

    #[test]
    fn lines_queued_while_the_writer_works_go_out_in_one_write_whole_and_in_order() {
        let out = Recorder::default();
        let (writer, guard) = super::start(out.clone(), super::Style::Json);
        let mut writer = super::Line(&writer.0, super::Style::Json);
        writer.write_all(b"first\n").unwrap();
        // An idle writer is woken by the first line: it goes out at once, alone.
        wait_until("the first line is written", || {
            out.0.lock().unwrap().len() == 1
        });
        for i in 0..500 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let calls = out.0.lock().unwrap().clone();
        assert!(calls.len() <= 3, "{} writes for 501 lines", calls.len());
        let text = String::from_utf8(calls.concat()).unwrap();
        let expected: String = std::iter::once("first\n".to_owned())
            .chain((0..500).map(|i| format!("line {i}\n")))
            .collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn the_guard_ends_even_when_stderr_never_returns() {
        struct Never(Arc<AtomicUsize>);
        impl Write for Never {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                self.0.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(3600));
                unreachable!()
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let (writer, guard) = super::start(Never(Arc::clone(&calls)), super::Style::Json);
        let mut writer = super::Line(&writer.0, super::Style::Json);
        writer.write_all(b"stuck\n").unwrap();
        wait_until("the writer took the line", || {
            calls.load(Ordering::SeqCst) == 1
        });
        let started = Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "shutdown hung on stderr"
        );
    }
}
