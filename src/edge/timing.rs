//! `Server-Timing` (CONTRACT section 15, opt-in with `server.server_timing`): the gateway's own
//! time split, written on each response so that a load test or a browser's devtools read the
//! per-request overhead from the responses themselves.
//!
//! - `auth`: the admission (framing, path, header policy, token verification, route policy);
//! - `upstream`: from choosing the upstream (connecting, when no pooled connection is reused,
//!   and sending the head) to the upstream's response head, summed over retries;
//! - `edge`: everything else from the complete request head to our response head, `auth`
//!   included (the entries are not disjoint: `edge` + `upstream` is the whole).
//!
//! Proxied responses carry all three, then the upstream's own entries; responses the gateway
//! makes (errors, the identity endpoints, the JWKS, preflights) `edge` and `auth`. Nothing
//! here runs when the setting is off, beyond the one `Instant` per upstream attempt the upstream
//! time histogram needs anyway.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;

pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// The times one request has spent so far, kept in its context.
#[derive(Debug, Default)]
pub struct Timing {
    /// The admission's own time, when timing is on.
    pub auth: Duration,
    /// Upstream attempts that ended (a response head, or a failure before one).
    upstream: Duration,
    /// The attempt under way, since its upstream was chosen.
    attempt: Option<Instant>,
    /// A response head came from the upstream: the response is a proxied one.
    proxied: bool,
}

impl Timing {
    /// An upstream attempt starts (the upstream has been chosen); an attempt that was still
    /// open (a retry after a failed connection) is counted as ended now.
    pub fn upstream_chosen(&mut self, now: Instant) {
        self.end_attempt(now);
        self.attempt = Some(now);
    }

    /// The upstream's response head is in: returns the attempt's time (for the histogram).
    pub fn upstream_answered(&mut self, now: Instant) -> Option<Duration> {
        let took = self.end_attempt(now);
        self.proxied = took.is_some();
        took
    }

    fn end_attempt(&mut self, now: Instant) -> Option<Duration> {
        let took = now.saturating_duration_since(self.attempt.take()?);
        self.upstream += took;
        Some(took)
    }

    /// Writes our `Server-Timing` entries first, then any the response already carries (an
    /// upstream's own), as one field. `started` is when the request head was complete.
    pub fn write(&mut self, resp: &mut ResponseHeader, started: Instant) {
        let now = Instant::now();
        // An attempt that failed (the error response is ours) still was not the gateway's time.
        self.end_attempt(now);
        let edge = now
            .saturating_duration_since(started)
            .saturating_sub(self.upstream);
        let theirs = resp.headers.get_all(&SERVER_TIMING);
        // One allocation, frozen into the header value without a copy.
        let mut value =
            BytesMut::with_capacity(96 + theirs.iter().map(|v| v.len() + 2).sum::<usize>());
        entry(&mut value, "edge", edge);
        value.extend_from_slice(b", ");
        entry(&mut value, "auth", self.auth);
        if self.proxied {
            value.extend_from_slice(b", ");
            entry(&mut value, "upstream", self.upstream);
        }
        for v in theirs {
            value.extend_from_slice(b", ");
            value.extend_from_slice(v.as_bytes());
        }
        // Only digits, names of ours and bytes that were a valid header value already.
        if let Ok(value) = HeaderValue::from_maybe_shared(value.freeze()) {
            let _ = resp.insert_header(SERVER_TIMING, value);
        }
    }
}

/// `name;dur=<ms>` with microsecond resolution (digits by hand: no formatting machinery on
/// every response).
fn entry(out: &mut BytesMut, name: &str, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b";dur=");
    let (mut ms, frac) = (us / 1000, us % 1000);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (ms % 10) as u8;
        ms /= 10;
        if ms == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    #[allow(clippy::cast_possible_truncation)] // each is a single decimal digit
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(t: &mut Timing, resp: &mut ResponseHeader, started: Instant) -> String {
        t.write(resp, started);
        let all: Vec<_> = resp.headers.get_all(&SERVER_TIMING).iter().collect();
        assert_eq!(all.len(), 1, "one Server-Timing field");
        all[0].to_str().unwrap().to_owned()
    }

    /// `(name, ms)` of each entry, in order; entries without `dur` have NaN.
    fn entries(v: &str) -> Vec<(String, f64)> {
        v.split(", ")
            .map(|e| {
                let mut parts = e.split(';');
                let name = parts.next().unwrap().to_owned();
                let dur = parts
                    .find_map(|p| p.strip_prefix("dur="))
                    .map_or(f64::NAN, |d| d.parse().unwrap());
                (name, dur)
            })
            .collect()
    }

    #[test]
    fn a_proxied_response_has_edge_auth_upstream_then_the_upstreams_own_entries() {
        let started = Instant::now()
            .checked_sub(Duration::from_millis(30))
            .unwrap();
        let mut t = Timing {
            auth: Duration::from_micros(1_234),
            ..Timing::default()
        };
        t.upstream_chosen(started + Duration::from_millis(2));
        t.upstream_answered(started + Duration::from_millis(22));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("server-timing", "db;dur=5.5").unwrap();
        resp.append_header("Server-Timing", "cache;desc=miss")
            .unwrap();
        let v = written(&mut t, &mut resp, started);
        let e = entries(&v);
        let names: Vec<_> = e.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["edge", "auth", "upstream", "db", "cache"], "{v}");
        assert!(v.contains(", auth;dur=1.234, "), "{v}");
        assert!(
            v.contains(", upstream;dur=20.000, "),
            "chosen to answered: {v}"
        );
        // 30 ms and more since the head, 20 of them upstream.
        assert!(
            (10.0..1_000.0).contains(&e[0].1),
            "edge: the whole less upstream, {v}"
        );
        assert!(v.ends_with("db;dur=5.5, cache;desc=miss"), "{v}");
    }

    #[test]
    fn a_response_made_here_has_edge_and_auth_only_and_a_failed_attempt_is_not_edge_time() {
        let started = Instant::now()
            .checked_sub(Duration::from_millis(50))
            .unwrap();
        let mut t = Timing::default();
        // A connection attempt that failed after 40 ms: the 502 is ours, the 40 ms were not.
        t.upstream_chosen(started + Duration::from_millis(5));
        t.upstream_chosen(started + Duration::from_millis(45));
        let mut resp = ResponseHeader::build(502, None).unwrap();
        let v = written(&mut t, &mut resp, started);
        let e = entries(&v);
        assert_eq!(e.len(), 2, "{v}");
        assert_eq!((e[0].0.as_str(), e[1].0.as_str()), ("edge", "auth"));
        assert!(
            e[0].1 < 40.0,
            "the upstream attempts are not edge time: {v}"
        );
        assert!(e[0].1 >= 5.0, "{v}");
    }

    #[test]
    fn durations_are_milliseconds_with_three_decimals() {
        for (d, want) in [
            (Duration::from_nanos(1_999), "auth;dur=0.001"),
            (Duration::ZERO, "auth;dur=0.000"),
            (Duration::from_micros(12_345_678), "auth;dur=12345.678"),
            (Duration::from_micros(100_020), "auth;dur=100.020"),
            (Duration::MAX, "auth;dur=18446744073709551.615"),
        ] {
            let mut out = BytesMut::new();
            entry(&mut out, "auth", d);
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        }
    }
}
