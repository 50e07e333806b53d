//! Logs: JSON lines on stderr, filtered by `RUST_LOG` (default `info`), written by a thread of
//! their own. A worker thread appends each line to a bounded in-memory buffer and goes on; it
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

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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
struct LineWriter(Arc<Queue>);

/// What `tracing` writes one formatted line into (one `write_all` per event); a line that
/// does not fit is counted in `portcullis_log_lines_dropped_total`.
#[derive(Debug)]
struct Line<'a>(&'a Queue);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if !self.0.push(line) {
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
        Line(&self.0)
    }
}

/// Starts the writer thread over `out`; the guard ends it.
fn start(out: impl Write + Send + 'static) -> (LineWriter, LogGuard) {
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
        LineWriter(Arc::clone(&queue)),
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

/// Installs the process's logger (once; later calls change nothing and return a guard of a
/// writer that is never used).
pub fn init() -> LogGuard {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for clamp in PINGORA_CLAMPS {
        filter = filter.add_directive(clamp.parse().expect("static directive"));
    }
    let (writer, guard) = start(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_current_span(false)
        .try_init();
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

    #[test]
    fn a_stalled_stderr_never_blocks_the_caller_and_drops_are_counted() {
        let release = Arc::new(AtomicBool::new(false));
        let (writer, guard) = super::start(Stalled(Arc::clone(&release)));
        let mut writer = super::Line(&writer.0);
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
        let (writer, guard) = super::start(out.clone());
        let mut writer = super::Line(&writer.0);
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
        let (writer, guard) = super::start(Never(Arc::clone(&calls)));
        let mut writer = super::Line(&writer.0);
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
