//! CPU time per request: the steadiest figure on a machine whose two cores also run the load
//! generator and the upstream. For each target, the proxy process's user and kernel time from
//! `/proc/PID/stat` before and after a `wrk` run, divided by the requests wrk completed;
//! alternating rounds, medians.

use std::fmt::Write as _;
use std::process::Command;

use crate::{Sample, median, table, wrk};

/// wrk's own shape for this section: one thread and 32 connections, so that the generator
/// takes about one core and leaves the proxy the other.
const WRK_THREADS: u64 = 1;
const WRK_CONNECTIONS: u64 = 32;

/// One thing to measure: a proxy process and a URL it serves.
pub struct Target {
    pub name: &'static str,
    pub threads: u64,
    /// The log level the process runs at, as the table shows it.
    pub log: &'static str,
    pub url: String,
    pub token: Option<String>,
    pub pid: u32,
}

/// Medians of one target's rounds, in microseconds of CPU per request.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub cpu_us: f64,
    pub user_us: f64,
    pub kernel_us: f64,
    pub rps: f64,
}

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's user and kernel time so far, in clock ticks (all its threads).
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its ')' are plain. utime
    // and stime are fields 14 and 15, so the 12th and 13th after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// Off-CPU time of a process so far, from `/proc/PID/task/*/schedstat`, summed over its
/// threads: (nanoseconds spent runnable but waiting for a core, time slices run). The wait is
/// the scheduler's share of a request's latency: a thread woken by its socket that finds both
/// cores taken waits here, whatever it would then do.
pub fn run_queue_wait(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .fold((0, 0), |(wait, slices), line| {
            let mut f = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse::<u64>().unwrap_or(0));
            (wait + f.next().unwrap_or(0), slices + f.next().unwrap_or(0))
        })
}

/// One run of wrk against `t`, with the process's CPU time around it.
fn sample(t: &Target, secs: u64, tick: f64) -> (Sample, Row) {
    let (u0, k0) = cpu_ticks(t.pid);
    let s = wrk(
        &t.url,
        t.token.as_deref(),
        secs,
        WRK_CONNECTIONS,
        WRK_THREADS,
    );
    let (u1, k1) = cpu_ticks(t.pid);
    #[allow(clippy::cast_precision_loss)]
    let per = |ticks: u64| ticks as f64 / tick * 1e6 / s.requests.max(1) as f64;
    let row = Row {
        cpu_us: per(u1 - u0 + k1 - k0),
        user_us: per(u1 - u0),
        kernel_us: per(k1 - k0),
        rps: s.rps,
    };
    (s, row)
}

/// Alternating rounds over every target; the median of each figure.
pub fn measure(targets: &[Target], secs: u64, rounds: u64) -> Vec<Row> {
    let tick = ticks_per_sec();
    for t in targets {
        wrk(&t.url, t.token.as_deref(), 1, WRK_CONNECTIONS, WRK_THREADS);
    }
    let mut rows: Vec<Vec<Row>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let (s, row) = sample(t, secs, tick);
            eprintln!(
                "cpu round {round} {} threads {} log {}: {:.1} us/request ({:.1} user, {:.1} kernel), {:.0} req/s",
                t.name, t.threads, t.log, row.cpu_us, row.user_us, row.kernel_us, row.rps
            );
            assert_eq!(
                s.non_2xx, 0,
                "{} answered non-2xx under load: the setup is wrong",
                t.name
            );
            rows[i].push(row);
        }
    }
    rows.iter()
        .map(|v| Row {
            cpu_us: median(v.iter().map(|r| r.cpu_us).collect()),
            user_us: median(v.iter().map(|r| r.user_us).collect()),
            kernel_us: median(v.iter().map(|r| r.kernel_us).collect()),
            rps: median(v.iter().map(|r| r.rps).collect()),
        })
        .collect()
}

/// The row of `name` at `threads` and `log`.
fn find<'a>(
    targets: &[Target],
    rows: &'a [Row],
    name: &str,
    threads: u64,
    log: &str,
) -> Option<&'a Row> {
    targets
        .iter()
        .position(|t| t.name == name && t.threads == threads && t.log == log)
        .map(|i| &rows[i])
}

/// The section's Markdown: one row per target, then the ratios the issue holds us to.
pub fn section(targets: &[Target], rows: &[Row], secs: u64, rounds: u64, out: &mut String) {
    let _ = writeln!(
        out,
        "CPU time the proxy process spends per request it answers (utime + stime from `/proc/PID/stat` \
         around each run ÷ requests completed), `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{secs}s`, \
         {rounds} alternating rounds, medians; stderr a pipe that the harness reads and discards, as a \
         log shipper would:\n"
    );
    let cells: Vec<Vec<String>> = targets
        .iter()
        .zip(rows)
        .map(|(t, r)| {
            vec![
                t.name.into(),
                t.threads.to_string(),
                t.log.into(),
                format!("{:.1}", r.cpu_us),
                format!("{:.1}", r.user_us),
                format!("{:.1}", r.kernel_us),
                format!("{:.0}", r.rps),
            ]
        })
        .collect();
    table(
        out,
        &[
            "target",
            "threads",
            "log level",
            "CPU µs / request",
            "user µs",
            "kernel µs",
            "req/s",
        ],
        &cells,
    );
    let mut ratios = Vec::new();
    for threads in [1, 2] {
        let hap = find(targets, rows, HAPROXY, threads, "—");
        for log in [DEFAULT_LOG, "warn"] {
            let req = find(targets, rows, REQUIRED_HS256, threads, log);
            let public = find(targets, rows, PUBLIC, threads, log);
            if let (Some(h), Some(r)) = (hap, req) {
                ratios.push(vec![
                    format!("HAProxy CPU / Portcullis CPU, required HS256, {threads} thread(s), log {log}"),
                    format!("{:.3}", h.cpu_us / r.cpu_us),
                    "≥ 1.0 (checkpoints 0.70, 0.85)".into(),
                ]);
                ratios.push(vec![
                    format!(
                        "Portcullis / HAProxy req/s, required HS256, {threads} thread(s), log {log}"
                    ),
                    format!("{:.3}", r.rps / h.rps),
                    "≥ 1.0".into(),
                ]);
            }
            if let (Some(p), Some(r)) = (public, req) {
                ratios.push(vec![
                    format!("public CPU / required HS256 CPU, {threads} thread(s), log {log}"),
                    format!("{:.3}", p.cpu_us / r.cpu_us),
                    "≥ 0.95".into(),
                ]);
            }
        }
    }
    if let (Some(off), Some(on)) = (
        find(targets, rows, REQUIRED_HS256, 2, DEFAULT_LOG),
        find(targets, rows, REQUIRED_HS256_TIMED, 2, DEFAULT_LOG),
    ) {
        ratios.push(vec![
            format!("required HS256 CPU / with Server-Timing on, 2 threads, log {DEFAULT_LOG}"),
            format!("{:.3}", off.cpu_us / on.cpu_us),
            "≥ 0.95 (cheap enough to leave on)".into(),
        ]);
    }
    for (name, target) in [
        (REQUIRED_HS256_ASSERTED, "≥ 0.95"),
        (REQUIRED_HS256_BOUND_ED, "— (signed per request)"),
        (REQUIRED_HS256_BOUND_P256, "— (signed per request)"),
    ] {
        if let (Some(off), Some(on)) = (
            find(targets, rows, REQUIRED_HS256, 2, DEFAULT_LOG),
            find(targets, rows, name, 2, DEFAULT_LOG),
        ) {
            ratios.push(vec![
                format!("required HS256 / {name}, 2 threads: req/s (CPU µs added per request)"),
                format!(
                    "{:.3} (+{:.1} µs)",
                    on.rps / off.rps,
                    on.cpu_us - off.cpu_us
                ),
                target.into(),
            ]);
        }
    }
    out.push('\n');
    table(out, &["ratio", "measured", "target"], &ratios);
}

pub const PUBLIC: &str = "portcullis public route";
pub const REQUIRED_HS256: &str = "portcullis required, HS256";
pub const REQUIRED_HS256_TIMED: &str = "portcullis required, HS256, Server-Timing on";
pub const REQUIRED_EDDSA: &str = "portcullis required, EdDSA";
pub const REQUIRED_HS256_ASSERTED: &str = "portcullis required, HS256, assertion (cached)";
pub const REQUIRED_HS256_BOUND_ED: &str = "portcullis required, HS256, assertion bound, Ed25519";
pub const REQUIRED_HS256_BOUND_P256: &str = "portcullis required, HS256, assertion bound, P-256";
pub const HAPROXY: &str = "haproxy jwt_verify HS256";
/// The label of the default log level in the table.
pub const DEFAULT_LOG: &str = "info (default)";
