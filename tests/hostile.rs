//! Hostile traffic, black-box: raw bytes over TCP against the real binary, with a recording
//! upstream that says what it received. Request smuggling, ambiguous credentials, oversized
//! heads, slow clients, path spellings aimed at a protected route, and hostile identity bodies
//! on both stores. Every case ends in a 4xx (or a correct proxy of exactly what was checked),
//! and the upstream never sees a request the gateway did not check.
//!
//! The decisions these tests pin are in docs/edge-decisions.md ("Hostile traffic").

mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::db::{Db, Store, on_both_stores};
use common::*;
use serde_json::{Value, json};

/// The hostile tests' gateway: rate limits out of the way, an owner route, a public and a
/// required one. `{STORE}` is each test's.
fn config() -> String {
    TestConfig::new()
        .server("threads = 2")
        .server("grace_period_secs = 0")
        .store("{STORE}")
        .cookie("secure = false")
        .fast_bcrypt()
        .no_rate_limits()
        .app(&["connect_timeout_ms = 1000", "read_timeout_ms = 5000"])
        .owner_route()
        .route("/public/{*rest}", "app", "public", &[])
        .route("/req/{*rest}", "app", "required", &[])
        .build()
}

fn gateway() -> Gateway {
    Gateway::start_with(
        &config(),
        &[],
        &[("STORE", "sqlite://{DIR}/hostile.db".to_owned())],
    )
}

/// The upstream never saw a request whose target contains `marker` (a smuggled request).
#[track_caller]
fn assert_never_smuggled(gw: &Gateway, marker: &str) {
    let hit: Vec<_> = gw
        .up()
        .all_requests()
        .into_iter()
        .filter(|r| r.path.contains(marker))
        .collect();
    assert!(
        hit.is_empty(),
        "a request the gateway never checked reached the upstream: {hit:#?}"
    );
}

/// One response off a byte stream: status, headers, body (by Content-Length; to the end of the
/// stream without one).
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_problem(&self, code: &str) -> bool {
        self.header("content-type")
            .is_some_and(|c| c.starts_with("application/problem+json"))
            && serde_json::from_slice::<Value>(&self.body).is_ok_and(|v| v["code"] == code)
    }
}

/// Writes `bytes` on one connection and reads every response until the gateway closes it or
/// stays silent for `quiet`. Pipelined requests get their responses in order.
fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Vec<Parsed> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(quiet)).unwrap();
    // The gateway may refuse and close before it has read everything: that is not an error.
    let _ = s.write_all(bytes);
    let mut all = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    parse_responses(&all)
}

fn parse_responses(mut rest: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let body_start = end + 4;
        let body_end = len.map_or(rest.len(), |l| (body_start + l).min(rest.len()));
        out.push(Parsed {
            status,
            headers,
            body: rest[body_start..body_end].to_vec(),
        });
        rest = &rest[body_end..];
    }
    out
}

/// Exactly one response, a 400 problem+json `bad_request`, and the connection closed after it:
/// the gateway's own refusal or Pingora's (whose bare 400 the gateway replaces on the wire,
/// `edge::pingora_errors`).
#[track_caller]
fn assert_one_400(responses: &[Parsed], what: &str) -> Value {
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![400], "{what}: responses {statuses:?}");
    assert!(
        responses[0].is_problem("bad_request"),
        "{what}: expected problem+json bad_request, got {:?} {}",
        responses[0].headers,
        String::from_utf8_lossy(&responses[0].body)
    );
    serde_json::from_slice(&responses[0].body).expect("a problem document")
}

/// The detail of Pingora's refusals as the gateway answers them (`edge::pingora_errors`).
const NOT_HTTP: &str = "The request is not valid HTTP/1.1";

/// `problem` is Pingora's refusal (`pingoras`) or the gateway's own, as the case says.
#[track_caller]
fn assert_refused_by(problem: &Value, pingoras: bool, what: &str) {
    assert_eq!(
        problem["detail"] == NOT_HTTP,
        pingoras,
        "{what}: refused by {}: {problem}",
        if pingoras {
            "Pingora expected"
        } else {
            "the gateway expected"
        }
    );
}

const SMUGGLED: &str = "GET /req/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// request smuggling
// ---------------------------------------------------------------------------------------------

/// CL.TE and TE.CL: both headers on one request. Pingora settles it as RFC 9112 6.3 says: the
/// body is chunked, Content-Length is dropped before anyone sees it, and the connection is closed
/// after the response, so the bytes after the chunked body are never read as a request. The
/// upstream sees one request, chunked, without Content-Length.
#[test]
fn content_length_with_transfer_encoding_is_read_as_chunked_and_nothing_follows() {
    let gw = gateway();
    let body = format!("0\r\n\r\n{SMUGGLED}");
    for (target, order) in [
        ("/public/clte", "cl-te"),
        ("/public/tecl", "te-cl"),
        ("/api/v1/auth/signin", "cl-te"),
    ] {
        let (first, second) = (
            format!("Content-Length: {}\r\n", body.len()),
            "Transfer-Encoding: chunked\r\n".to_owned(),
        );
        let framing = if order == "cl-te" {
            first + &second
        } else {
            second + &first
        };
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n{body}"
        );
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
        let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
        if target.starts_with("/public") {
            assert_eq!(statuses, vec![200], "{target}");
            let seen = Seen::from_json(&serde_json::from_slice(&r[0].body).unwrap());
            assert_eq!(seen.path, target);
            assert!(seen.all("content-length").is_empty(), "{seen:?}");
            assert_eq!(seen.all("transfer-encoding"), vec!["chunked".to_owned()]);
            assert_eq!(seen.body, "");
        } else {
            // an empty body is not JSON
            assert_eq!(statuses, vec![400], "{target}");
            assert!(r[0].is_problem("bad_request"));
        }
    }
    assert_never_smuggled(&gw, "smuggled");
    assert_eq!(gw.up().proxied_count(), 2);
}

/// Two Content-Length lines: differing values are refused by Pingora while it reads the head (a
/// bare 400); equal values, which Pingora would accept and forward twice, are refused by the
/// gateway, and so is a comma list. A length that is not a plain decimal number is Pingora's.
#[test]
fn repeated_content_length_is_400_whether_the_values_differ_or_not() {
    let gw = gateway();
    let body = format!("x{SMUGGLED}");
    for (lengths, ours) in [
        (
            format!("Content-Length: 1\r\nContent-Length: {}\r\n", body.len()),
            false,
        ),
        (
            format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len()),
            true,
        ),
        (format!("Content-Length: {0}, {0}\r\n", body.len()), true),
        // not a plain decimal number: Pingora refuses
        ("Content-Length: +1\r\n".to_owned(), false),
        ("Content-Length: -1\r\n".to_owned(), false),
        ("Content-Length: 0x1\r\n".to_owned(), false),
        ("Content-Length: 1 1\r\n".to_owned(), false),
        (
            "Content-Length: 99999999999999999999999\r\n".to_owned(),
            false,
        ),
    ] {
        let req = format!("POST /public/a HTTP/1.1\r\nHost: localhost\r\n{lengths}\r\n{body}");
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
        let problem = assert_one_400(&r, &lengths);
        assert_refused_by(&problem, !ours, &lengths);
    }
    assert_never_smuggled(&gw, "smuggled");
    gw.up().assert_not_called();
}

/// Every spelling of Transfer-Encoding but a single `chunked` (any case, optional white space)
/// is refused, by Pingora or by the gateway (which would otherwise see other codings dropped
/// silently); the plain ones are proxied as one chunked request whose body is just data.
#[test]
fn transfer_encoding_must_be_one_chunked_coding_or_the_request_is_400() {
    let gw = gateway();
    // The smuggled request sits after the terminating chunk: an upstream that framed the body
    // by anything but `chunked` would read it as a second request.
    let chunked = format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
    // (raw framing header lines, refused?, refused by the gateway (problem+json) rather than Pingora)
    let cases: &[(&str, bool, bool)] = &[
        ("Transfer-Encoding: chunked\r\n", false, false),
        ("Transfer-Encoding: ChUnKeD\r\n", false, false),
        ("Transfer-Encoding:\tchunked\r\n", false, false),
        ("Transfer-Encoding: chunked \r\n", false, false),
        ("Transfer-Encoding: xchunked\r\n", true, false),
        ("Transfer-Encoding: chunked, identity\r\n", true, false),
        ("Transfer-Encoding: identity, chunked\r\n", true, true),
        ("Transfer-Encoding: gzip, chunked\r\n", true, true),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            true,
            true,
        ),
        (
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
            true,
            true,
        ),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            true,
            false,
        ),
        ("Transfer-Encoding : chunked\r\n", true, false),
        ("Transfer-Encoding:\r\n chunked\r\n", true, false),
        ("Transfer-Encoding: \"chunked\"\r\n", true, false),
    ];
    for &(framing, refused, ours) in cases {
        let req = format!(
            "POST /public/te HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{framing}\r\n{chunked}"
        );
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
        if refused {
            let problem = assert_one_400(&r, framing);
            assert_refused_by(&problem, !ours, framing);
        } else {
            let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
            assert_eq!(statuses, vec![200], "{framing:?}");
            let seen = Seen::from_json(&serde_json::from_slice(&r[0].body).unwrap());
            assert_eq!(
                seen.body, "hello",
                "{framing:?}: the body is only the chunk"
            );
        }
    }
    assert_never_smuggled(&gw, "smuggled");
    let proxied = gw.up().proxied();
    assert_eq!(
        proxied.len(),
        4,
        "only the plain chunked spellings: {proxied:#?}"
    );
}

/// An upstream that records the raw bytes of each connection's first request (head and chunked
/// body up to the terminating chunk and trailers) and answers 200.
fn spawn_raw_upstream() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // until the end of a chunked body with its trailer section, or silence
                while !got.windows(5).any(|w| w == b"0\r\n\r\n") && !got.ends_with(b"\r\n\r\n\r\n")
                {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                // a request with a head only (a health probe) is not interesting
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    log.lock().unwrap().push(got);
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    (addr, seen)
}

/// Trailers after a chunked body (`X-User-Id`, a second `Transfer-Encoding`) never reach the
/// upstream: Pingora drops request trailers, so nothing can smuggle an identity header in
/// behind the body where the header policy does not look.
#[test]
fn request_trailers_never_reach_the_upstream() {
    let (raw, seen) = spawn_raw_upstream();
    let gw = Gateway::start_with(
        &config().replace("{UPSTREAM}", &raw.to_string()),
        &[],
        &[("STORE", "sqlite://{DIR}/hostile.db".to_owned())],
    );
    let req = "POST /public/trailers HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Id\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-User-Id: attacker\r\nX_User_Email: a@evil.example\r\nAuthorization: Bearer forged\r\n\r\n";
    let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
    assert_eq!(r.iter().map(|p| p.status).collect::<Vec<_>>(), vec![200]);
    let all = seen.lock().unwrap().clone();
    let forwarded: Vec<String> = all
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .filter(|t| t.contains("/public/trailers"))
        .collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:#?}");
    let text = forwarded[0].to_ascii_lowercase();
    assert!(text.contains("hello"), "{text}");
    for leaked in ["attacker", "evil.example", "forged", "x-user-", "x_user_"] {
        assert!(
            !text.contains(leaked),
            "{leaked} reached the upstream: {text}"
        );
    }
}

/// RFC 9112 6.1: Transfer-Encoding on HTTP/1.0 is faulty framing.
#[test]
fn transfer_encoding_on_http_1_0_is_400() {
    let gw = gateway();
    let req = format!(
        "POST /public/a HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
    assert_one_400(&r, "TE on HTTP/1.0");
    assert_never_smuggled(&gw, "smuggled");
    gw.up().assert_not_called();
}

/// A chunk size that overflows 64 bits: the body cannot be read, the request fails as the
/// client's fault (400, never a 5xx), and whatever follows is never taken for a request.
#[test]
fn chunk_size_overflow_is_400_and_nothing_after_it_is_a_request() {
    let gw = gateway();
    for target in ["/public/overflow", "/api/v1/auth/register"] {
        let req = format!(
            "POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc\r\n0\r\n\r\n{SMUGGLED}"
        );
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_secs(2));
        let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
        assert!(
            statuses.is_empty() || statuses == vec![400],
            "{target}: a broken chunk size must be a 400 or a closed connection, got {statuses:?}"
        );
    }
    assert_never_smuggled(&gw, "smuggled");
    assert!(
        gw.up()
            .all_requests()
            .iter()
            .all(|r| r.path != "/public/overflow"),
        "a request with an unreadable body must not complete upstream"
    );
    // and the gateway still serves
    assert_eq!(gw.get("/public/after", &[]).status, 200);
}

/// Bare LF line endings are read as line endings (httparse, like most servers), and the request
/// is checked like any other: no token on a required route is a 401, never a pass.
#[test]
fn bare_lf_line_endings_are_parsed_and_checked_like_crlf() {
    let gw = gateway();
    let sub = new_sub();
    let r = exchange(
        gw.addr,
        format!("GET /api/{sub}/tasks/1 HTTP/1.1\nHost: localhost\nConnection: close\n\n")
            .as_bytes(),
        Duration::from_millis(1500),
    );
    assert_eq!(r.len(), 1);
    assert!(r[0].status == 401 && r[0].is_problem("missing_token"));
    let token = token_for(&sub);
    let r = exchange(
        gw.addr,
        format!(
            "GET /api/{sub}/tasks/1 HTTP/1.1\nHost: localhost\nAuthorization: Bearer {token}\nConnection: close\n\n"
        )
        .as_bytes(),
        Duration::from_millis(1500),
    );
    assert_eq!(r[0].status, 200);
    let seen = Seen::from_json(&serde_json::from_slice(&r[0].body).unwrap());
    assert_eq!(seen.path, format!("/api/{sub}/tasks/1"));
    assert_eq!(seen.all("x-user-id"), vec![sub]);
    // a bare CR inside a header cannot split it into two
    let r = exchange(
        gw.addr,
        b"GET /public/cr HTTP/1.1\r\nHost: localhost\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
        Duration::from_millis(1500),
    );
    assert_one_400(&r, "bare CR");
    assert!(
        gw.up()
            .all_requests()
            .iter()
            .all(|r| r.path != "/public/cr")
    );
}

/// Request lines without a usable version (HTTP/0.9 style, `HTTP/1.2`, `HTTP/2.0` in text,
/// lower case) are refused before any route is looked at, and never proxied.
#[test]
fn request_lines_without_a_known_version_are_400() {
    let gw = gateway();
    let victim = new_sub();
    for line in [
        format!("GET /api/{victim}/tasks/1\r\n\r\n"),
        format!("GET /api/{victim}/tasks/1 HTTP/1.2\r\nHost: localhost\r\n\r\n"),
        format!("GET /api/{victim}/tasks/1 HTTP/2.0\r\nHost: localhost\r\n\r\n"),
        format!("GET /api/{victim}/tasks/1 http/1.1\r\nHost: localhost\r\n\r\n"),
        format!("GET  /api/{victim}/tasks/1 HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    ] {
        let r = exchange(gw.addr, line.as_bytes(), Duration::from_millis(1500));
        let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
        assert!(
            statuses == vec![400] || statuses.is_empty(),
            "{line:?}: {statuses:?}"
        );
    }
    gw.up().assert_not_called();
}

/// Pipelined requests on one connection: a public request followed by unauthenticated ones to
/// protected routes. Each later request is either checked on its own (401) or dropped with the
/// connection; the upstream sees only the first.
#[test]
fn pipelined_requests_are_checked_one_by_one() {
    let gw = gateway();
    let victim = new_sub();
    let public = "POST /public/first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello";
    let second = format!("GET /api/{victim}/tasks/1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let third = "GET /req/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let r = exchange(
        gw.addr,
        format!("{public}{second}{third}").as_bytes(),
        Duration::from_secs(2),
    );
    let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
    // Pingora does not pipeline by default: bytes read past a request's body end the
    // connection after the first response. Either way nothing unchecked goes through.
    assert_eq!(statuses.first(), Some(&200), "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 401), "{statuses:?}");
    let paths: Vec<String> = gw.up().proxied().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec!["/public/first".to_owned()]);
}

/// A request written inside a public request's body reaches the upstream as that body, once:
/// Pingora re-frames every body it forwards.
#[test]
fn a_request_inside_a_body_stays_a_body() {
    let gw = gateway();
    let victim = new_sub();
    let inner = format!("GET /api/{victim}/tasks/1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let req = format!(
        "POST /public/carrier HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{inner}",
        inner.len()
    );
    let r = exchange(gw.addr, req.as_bytes(), Duration::from_millis(1500));
    assert_eq!(r.iter().map(|p| p.status).collect::<Vec<_>>(), vec![200]);
    let all = gw.up().proxied();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].body, inner);
}

// ---------------------------------------------------------------------------------------------
// credentials
// ---------------------------------------------------------------------------------------------

/// The Authorization header decides when present (CONTRACT 3): an invalid Bearer is a 401 even
/// next to a valid cookie; the gateway never falls back to whichever credential works.
#[test]
fn an_invalid_bearer_never_falls_back_to_a_valid_cookie() {
    let gw = gateway();
    let sub = new_sub();
    let good = token_for(&sub);
    let r = gw.get(
        &format!("/api/{sub}/tasks/1"),
        &[
            ("Authorization", "Bearer not-a-jwt"),
            ("Cookie", &format!("pc_tok={good}")),
        ],
    );
    assert_401(&r, "invalid_token", true);
    gw.up().assert_not_called();
}

/// Two Bearer tokens joined in one header line are one malformed token, not a choice.
#[test]
fn comma_joined_bearer_tokens_are_invalid_token() {
    let gw = gateway();
    let sub = new_sub();
    let t = token_for(&sub);
    for v in [format!("Bearer {t}, Bearer {t}"), format!("Bearer {t} {t}")] {
        let r = gw.get(&format!("/api/{sub}/tasks/1"), &[("Authorization", &v)]);
        assert_401(&r, "invalid_token", true);
    }
    // repeated header lines whose names differ only in case are still two headers
    let b = format!("Bearer {t}");
    let r = gw.get(
        &format!("/api/{sub}/tasks/1"),
        &[("authorization", &b), ("AUTHORIZATION", &b)],
    );
    assert_problem(&r, 400, "bad_request");
    gw.up().assert_not_called();
}

/// `?access_token=` / `?token=` never authenticate, on the identity endpoints either.
#[test]
fn query_string_credentials_never_authenticate_identity_endpoints() {
    let gw = gateway();
    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": email(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let t = r.json()["token"].as_str().unwrap().to_owned();
    for q in ["access_token", "token", "pc_tok", "authorization"] {
        let r = gw.get(&format!("/api/v1/auth/me?{q}={t}"), &[]);
        assert_401(&r, "missing_token", false);
        assert_no_token_echo(&r, &t);
    }
}

// ---------------------------------------------------------------------------------------------
// oversized heads and bodies
// ---------------------------------------------------------------------------------------------

/// A request head beyond the gateway's limits is a 400 problem+json and is never proxied:
/// target over 8 KiB, one header line over 16 KiB (a huge cookie included), a head over 64 KiB.
#[test]
fn oversized_request_heads_are_400_and_never_proxied() {
    let gw = gateway();
    let long_target = format!("/public/{}", "a".repeat(9 * 1024));
    let r = gw.raw(&request_bytes("GET", &long_target, &[], None));
    assert_problem(&r, 400, "bad_request");

    let huge_cookie = format!("pc_other={}", "c".repeat(20 * 1024));
    let r = gw.get("/public/x", &[("Cookie", &huge_cookie)]);
    assert_problem(&r, 400, "bad_request");
    let r = gw.get("/public/x", &[("X-Big", &"b".repeat(17 * 1024))]);
    assert_problem(&r, 400, "bad_request");

    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("X-Pad-{i}"), "p".repeat(2000)))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let r = gw.get("/public/x", &headers);
    assert_problem(&r, 400, "bad_request");

    // just under every limit still passes
    let r = gw.get("/public/x", &[("X-Big", &"b".repeat(15 * 1024))]);
    assert_eq!(r.status, 200);
    assert_eq!(gw.up().proxied_count(), 1);
}

/// Beyond what Pingora buffers (a 1 MiB head, 256 header lines), Pingora itself refuses with a
/// 400 or closes: no 5xx, no crash, and the gateway serves the next client.
#[test]
fn heads_beyond_pingoras_buffers_are_refused_without_a_crash() {
    let gw = gateway();
    let mut req = b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..300 {
        req.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let r = exchange(gw.addr, &req, Duration::from_millis(1500));
    assert_one_400(&r, "300 header lines");

    let mut req = b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nX-Huge: ".to_vec();
    req.extend(std::iter::repeat_n(b'h', 2 * 1024 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    let r = exchange(gw.addr, &req, Duration::from_millis(1500));
    let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
    assert!(
        statuses.is_empty() || statuses == vec![400],
        "a 2 MiB head: {statuses:?}"
    );
    gw.up().assert_not_called();
    assert_eq!(gw.get("/public/next", &[]).status, 200);
}

/// A chunked identity body (no Content-Length to refuse up front) is cut off at 16 KiB: 413.
#[test]
fn chunked_identity_bodies_beyond_16_kib_are_413() {
    let gw = gateway();
    let chunk = "x".repeat(4096);
    let mut body = String::new();
    for _ in 0..5 {
        let _ = write!(body, "{:x}\r\n{chunk}\r\n", chunk.len());
    }
    body.push_str("0\r\n\r\n");
    let req = format!(
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let r = gw.raw(req.as_bytes());
    assert_problem(&r, 413, "payload_too_large");
}

// ---------------------------------------------------------------------------------------------
// slow clients
// ---------------------------------------------------------------------------------------------

/// ~300 connections dribbling a request head a byte at a time do not starve anyone: a normal
/// request's latency stays low while they are held. The figure is printed for the report.
#[test]
fn slow_header_senders_do_not_starve_other_clients() {
    let gw = gateway();
    let addr = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(
        slow.len() >= 290,
        "could only open {} connections",
        slow.len()
    );
    let head = b"GET /public/slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    // one thread feeds every slow connection one byte per round, a round every 100 ms
    let feeder = {
        let stop = std::sync::Arc::clone(&stop);
        let mut conns: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let byte = head.get(i).copied().unwrap_or(b'z');
                for c in &mut conns {
                    let _ = c.write_all(&[byte]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let r = gw.get("/public/normal", &[]);
        latencies.push(t.elapsed());
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "slowloris: {} slow connections held; normal request latency median {median:?}, max {max:?}",
        slow.len()
    );
    assert!(max < Duration::from_secs(1), "max latency {max:?}");
    assert!(
        gw.up()
            .all_requests()
            .iter()
            .all(|r| r.path != "/public/slow"),
        "an incomplete head was proxied"
    );
    slow.clear();
}

/// A gateway whose clients get 1 s to send a request head.
fn quick_head_gateway() -> Gateway {
    Gateway::start_with(
        &config().replace(
            "grace_period_secs = 0",
            "grace_period_secs = 0\nrequest_head_timeout_ms = 1000",
        ),
        &[],
        &[("STORE", "sqlite://{DIR}/hostile.db".to_owned())],
    )
}

/// Reads until the peer closes (or 10 s pass): when it closed, and what it sent.
fn wait_for_close(s: &mut TcpStream) -> (Instant, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (Instant::now(), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A head dribbled a byte every 200 ms is cut off at `request_head_timeout_ms` (Pingora alone
/// waits up to 60 s per read, for ever in total), and never reaches the upstream.
#[test]
fn a_request_head_not_complete_within_the_deadline_is_cut_off() {
    let gw = quick_head_gateway();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let opened = Instant::now();
    let mut writer = s.try_clone().unwrap();
    let dribble = std::thread::spawn(move || {
        for b in b"GET /public/dribble HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let (closed, got) = wait_for_close(&mut s);
    let after = closed - opened;
    eprintln!("dribbled head cut off after {after:?}");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    dribble.join().unwrap();
    assert!(
        gw.up()
            .all_requests()
            .iter()
            .all(|r| r.path != "/public/dribble")
    );
    let metrics = get(gw.admin, "/metrics", &[]).text();
    assert!(
        metrics.contains("portcullis_request_head_timeouts_total 1"),
        "{metrics}"
    );
}

/// The deadline re-arms after each response: a kept-alive connection may send its next request
/// within it, and is closed when it stays idle past it (Pingora alone keeps it for ever).
#[test]
fn kept_alive_connections_get_the_same_deadline_for_each_head() {
    let gw = quick_head_gateway();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = b"GET /public/ka HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for _ in 0..3 {
        s.write_all(one).unwrap();
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        std::thread::sleep(Duration::from_millis(600)); // within the deadline each time
    }
    let idle_from = Instant::now();
    let (closed, got) = wait_for_close(&mut s);
    let idle = closed - idle_from;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(
        idle < Duration::from_secs(3),
        "an idle kept-alive connection lived {idle:?}"
    );
    assert_eq!(gw.up().proxied_count(), 3);
}

/// The deadline is for heads only: a slow body (a byte every 300 ms for 3 s) is read in full.
#[test]
fn a_slow_body_is_not_cut_by_the_head_deadline() {
    let gw = quick_head_gateway();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /public/slow-body HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
        .unwrap();
    for b in b"0123456789" {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&[*b]).unwrap();
    }
    let (_, got) = wait_for_close(&mut s);
    let r = parse_responses(&got);
    assert_eq!(r.len(), 1, "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(r[0].status, 200);
    assert_eq!(gw.up().proxied()[0].body, "0123456789");
}

/// An identity endpoint's body is read by the gateway itself, under the same deadline as the
/// head: dribbled over 3 s against a 1 s deadline it ends in a 400 after about a second, and
/// nothing is registered. A body sent at once is served (bcrypt time does not count).
#[test]
fn an_identity_body_must_arrive_within_the_head_deadline() {
    let gw = quick_head_gateway();
    let body = format!(r#"{{"email":"{}","password":"{PASSWORD}"}}"#, email());
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let opened = Instant::now();
    s.write_all(
        format!(
            "POST /api/v1/auth/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut writer = s.try_clone().unwrap();
    let bytes = body.clone().into_bytes();
    let dribble = std::thread::spawn(move || {
        for chunk in bytes.chunks(4) {
            std::thread::sleep(Duration::from_millis(150));
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
    });
    let (closed, got) = wait_for_close(&mut s);
    let after = closed - opened;
    let r = parse_responses(&got);
    assert_eq!(r.len(), 1, "{:?}", String::from_utf8_lossy(&got));
    assert!(
        r[0].status == 400 && r[0].is_problem("bad_request"),
        "{}",
        r[0].status
    );
    assert!(
        after < Duration::from_millis(2500),
        "answered after {after:?}"
    );
    dribble.join().unwrap();

    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": email(), "password": PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// path spellings aimed at a protected route
// ---------------------------------------------------------------------------------------------

/// What a hostile spelling may lead to.
#[derive(Debug)]
enum Outcome {
    /// 400 bad_request, never proxied.
    Refused,
    /// 404, never proxied.
    NoRoute,
    /// Pingora's own 400 (the target's authority is not the `Host`), never proxied.
    AmbiguousAuthority,
    /// Treated as this protected path: 401 without a token; with the owner's token proxied as
    /// exactly this path.
    Checked(String),
    /// A public path, proxied as exactly this target.
    Public(String),
}

/// Every spelling either gets a 4xx without reaching the upstream, or reaches it only as the
/// path that was checked: assertions are on what the recording upstream saw.
#[test]
#[allow(clippy::too_many_lines)] // one table of cases, one loop
fn hostile_path_spellings_reach_the_upstream_only_as_the_checked_path() {
    let gw = gateway();
    let sub = new_sub();
    let token = token_for(&sub);
    let protected = format!("/api/{sub}/tasks/x");
    let cases: Vec<(String, Outcome)> = vec![
        // dot-segments, raw and encoded
        (
            format!("/public/../api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        (
            format!("/public/%2e%2e/api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        (
            format!("/public/%2E./api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        (
            format!("/req/./../api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        (
            format!("//api//{sub}///tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        (
            format!("http://localhost/public/../api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        // an absolute-form target naming another host than `Host`: Pingora's 400
        (
            format!("http://evil.example/public/../api/{sub}/tasks/x"),
            Outcome::AmbiguousAuthority,
        ),
        // encoded separators and their doubles
        (format!("/public/..%2fapi/{sub}/tasks/x"), Outcome::Refused),
        (
            format!("/public%2f..%2fapi/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (
            format!("/public/%2e%2e%2fapi/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (format!("/public/..%5capi/{sub}/tasks/x"), Outcome::Refused),
        (format!("/public/..\\api/{sub}/tasks/x"), Outcome::Refused),
        (
            format!("/public/%252e%252e/api/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (
            format!("/public/..%252fapi/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (format!("/public/.%00./api/{sub}/tasks/x"), Outcome::Refused),
        // `;` parameters
        (format!("/public/..;/api/{sub}/tasks/x"), Outcome::Refused),
        (
            format!("/public/.;x=1/../api/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (format!("/api;x=1/{sub}/tasks/x"), Outcome::NoRoute),
        // case
        (format!("/API/{sub}/tasks/x"), Outcome::NoRoute),
        (
            format!("/Public/../api/{sub}/tasks/x"),
            Outcome::Checked(protected.clone()),
        ),
        // overlong and invalid UTF-8 in escapes: never decoded into a `.` or `/` by anyone
        (
            format!("/public/%c0%ae%c0%ae/api/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (
            format!("/public/..%c0%afapi/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        (
            format!("/public/%e0%80%ae%e0%80%ae/api/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        ("/public/%ff".to_owned(), Outcome::Refused),
        ("/public/%c3".to_owned(), Outcome::Refused),
        (
            "/public/%C3%A9t%C3%A9".to_owned(),
            Outcome::Public("/public/%C3%A9t%C3%A9".to_owned()),
        ),
        // invalid escapes
        (
            format!("/public/%u002e%u002e/api/{sub}/tasks/x"),
            Outcome::Refused,
        ),
        ("/public/%".to_owned(), Outcome::Refused),
        ("/public/%g1".to_owned(), Outcome::Refused),
        // the query is not the path
        (
            format!("/public/q?/../../api/{sub}/tasks/x"),
            Outcome::Public(format!("/public/q?/../../api/{sub}/tasks/x")),
        ),
    ];
    for (raw, outcome) in cases {
        let before = gw.up().proxied_count();
        let anon = gw.raw(&request_bytes("GET", &raw, &[], None));
        match &outcome {
            Outcome::Refused => {
                assert_eq!(anon.status, 400, "{raw:?}: {}", anon.text());
                assert_problem(&anon, 400, "bad_request");
            }
            Outcome::NoRoute => {
                assert_problem(&anon, 404, "not_found");
            }
            Outcome::AmbiguousAuthority => {
                assert_eq!(anon.status, 400, "{raw:?}");
                assert_eq!(
                    anon.json()["detail"],
                    NOT_HTTP,
                    "{raw:?}: Pingora's, as a problem"
                );
            }
            Outcome::Checked(path) => {
                assert_eq!(anon.status, 401, "{raw:?}: {}", anon.text());
                assert_401(&anon, "missing_token", false);
                assert_eq!(
                    gw.up().proxied_count(),
                    before,
                    "{raw:?} passed unauthenticated"
                );
                let authed = gw.raw(&request_bytes(
                    "GET",
                    &raw,
                    &[("Authorization", &format!("Bearer {token}"))],
                    None,
                ));
                let seen = authed.seen();
                assert_eq!(
                    &seen.path, path,
                    "{raw:?} reached the upstream as another path"
                );
                assert_eq!(seen.all("x-user-id"), vec![sub.clone()]);
                continue;
            }
            Outcome::Public(path) => {
                assert_eq!(anon.status, 200, "{raw:?}: {}", anon.text());
                assert_eq!(&anon.seen().path, path, "{raw:?}");
                continue;
            }
        }
        assert_eq!(
            gw.up().proxied_count(),
            before,
            "{raw:?} ({outcome:?}) was proxied"
        );
    }
    // nothing ever reached the protected path without the owner's token
    for seen in gw.up().proxied() {
        if seen.path.contains(&sub) && !seen.path.contains('?') {
            assert_eq!(seen.path, protected);
            assert_eq!(seen.all("x-user-id"), vec![sub.clone()]);
        }
    }
}

/// Control bytes in the request target: Pingora percent-escapes the request line's illegal
/// bytes; an escaped NUL is then refused by the gateway, other controls reach the upstream only
/// escaped (a byte inside a segment, never a separator).
#[test]
fn control_bytes_in_the_target_are_refused_or_escaped() {
    let gw = gateway();
    for (target, forwarded) in [
        (&b"/public/a\x00b"[..], None),
        (b"/public/a\x01b", Some("/public/a%01b")),
        (b"/public/a\x7fb", Some("/public/a%7Fb")),
        (b"/public/a\x1b[0mb", Some("/public/a%1B[0mb")),
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let r = exchange(gw.addr, &req, Duration::from_millis(1500));
        let what = String::from_utf8_lossy(target).into_owned();
        match forwarded {
            None => {
                // Pingora escapes it as %00; the gateway's canonical path refuses that.
                let problem = assert_one_400(&r, &what);
                assert_refused_by(&problem, false, &what);
            }
            Some(path) => {
                assert_eq!(
                    r.iter().map(|p| p.status).collect::<Vec<_>>(),
                    vec![200],
                    "{what:?}"
                );
                let seen = Seen::from_json(&serde_json::from_slice(&r[0].body).unwrap());
                assert_eq!(seen.path, path, "{what:?}");
            }
        }
    }
    assert_eq!(gw.up().proxied_count(), 3);
}

// ---------------------------------------------------------------------------------------------
// hostile identity bodies, on both stores
// ---------------------------------------------------------------------------------------------

const PASSWORD: &str = "correct horse battery";

fn email() -> String {
    format!("h-{}@example.com", uuid::Uuid::new_v4().simple())
}

fn post(gw: &Gateway, path: &str, body: &Value) -> Response {
    post_bytes(gw, path, body.to_string().as_bytes())
}

fn post_bytes(gw: &Gateway, path: &str, body: &[u8]) -> Response {
    gw.raw(&request_bytes(
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    ))
}

fn identity_gateway(store: Store) -> (Gateway, Db) {
    let db = Db::new(store);
    let gw = Gateway::start_with(&config(), &[], &[("STORE", db.url.clone())]);
    (gw, db)
}

/// Posts `body` to register and to signin; both must answer `status` with `code`.
#[track_caller]
fn both_refuse(gw: &Gateway, body: &[u8], status: u16, code: &str) -> Value {
    let mut last = Value::Null;
    for path in ["/api/v1/auth/register", "/api/v1/auth/signin"] {
        let r = post_bytes(gw, path, body);
        assert!(
            r.status < 500,
            "{path} {:?}: {} {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]),
            r.status,
            r.text()
        );
        last = assert_problem(&r, status, code);
        assert!(!r.text().contains(PASSWORD), "the password is echoed");
    }
    last
}

#[allow(clippy::too_many_lines)] // a list of cases against one gateway, then one check of the store
fn hostile_bodies_are_4xx_and_store_nothing(store: Store) {
    let (gw, db) = identity_gateway(store);
    let anchor = email();
    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": anchor, "password": PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // NUL in a string (JSON-escaped) → 422 naming the field; a raw NUL byte → 400
    let v = both_refuse(
        &gw,
        json!({"email": "nul\u{0}@example.com", "password": PASSWORD})
            .to_string()
            .as_bytes(),
        422,
        "validation_failed",
    );
    assert!(v["errors"]["email"].is_string(), "{v}");
    let v = both_refuse(
        &gw,
        json!({"email": email(), "password": "pass\u{0}word123"})
            .to_string()
            .as_bytes(),
        422,
        "validation_failed",
    );
    assert!(v["errors"]["password"].is_string(), "{v}");
    both_refuse(
        &gw,
        format!("{{\"email\":\"raw\0nul@example.com\",\"password\":\"{PASSWORD}\"}}").as_bytes(),
        400,
        "bad_request",
    );
    // invalid UTF-8 (a lone continuation byte, an overlong `@`)
    for bad in [&b"\x80"[..], b"\xc0\x80", b"\xed\xa0\x80", b"\xff"] {
        let mut body = b"{\"email\":\"x".to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(format!("@example.com\",\"password\":\"{PASSWORD}\"}}").as_bytes());
        both_refuse(&gw, &body, 400, "bad_request");
    }
    // wrong JSON types, at the top and in the fields
    for body in [
        json!([anchor, PASSWORD]),
        json!("email"),
        json!(42),
        json!(null),
        json!(true),
    ] {
        let v = both_refuse(&gw, body.to_string().as_bytes(), 422, "validation_failed");
        assert!(v["errors"]["body"].is_string(), "{body} → {v}");
    }
    for (body, field) in [
        (json!({"email": [anchor], "password": PASSWORD}), "email"),
        (
            json!({"email": {"$ne": null}, "password": PASSWORD}),
            "email",
        ),
        (json!({"email": null, "password": PASSWORD}), "email"),
        (json!({"email": true, "password": PASSWORD}), "email"),
        (json!({"email": anchor, "password": 12_345_678}), "password"),
        (
            json!({"email": anchor, "password": {"$gt": ""}}),
            "password",
        ),
        (json!({"email": anchor, "password": [PASSWORD]}), "password"),
    ] {
        let v = both_refuse(&gw, body.to_string().as_bytes(), 422, "validation_failed");
        assert!(v["errors"][field].is_string(), "{body} → {v}");
    }
    // duplicate keys: neither value is picked
    let (a, b) = (email(), email());
    let dup = format!(r#"{{"email":"{a}","email":"{b}","password":"{PASSWORD}"}}"#);
    both_refuse(&gw, dup.as_bytes(), 422, "validation_failed");
    let dup = format!(r#"{{"email":"{a}","password":"{PASSWORD}","password":"other-password"}}"#);
    both_refuse(&gw, dup.as_bytes(), 422, "validation_failed");
    // unknown fields (mass assignment)
    for extra in [
        json!({"id": uuid::Uuid::new_v4().to_string()}),
        json!({"admin": true}),
        json!({"created_at": "1970-01-01"}),
    ] {
        let mut body = json!({"email": email(), "password": PASSWORD});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let v = both_refuse(&gw, body.to_string().as_bytes(), 422, "validation_failed");
        assert!(
            v["errors"]["body"]
                .as_str()
                .unwrap()
                .contains("unknown field"),
            "{v}"
        );
    }
    // enormous strings: within the body limit → 422; beyond it → 413
    let v = both_refuse(
        &gw,
        json!({"email": format!("{}@example.com", "a".repeat(15_000)), "password": PASSWORD})
            .to_string()
            .as_bytes(),
        422,
        "validation_failed",
    );
    assert!(v["errors"]["email"].is_string());
    both_refuse(
        &gw,
        json!({"email": email(), "password": "p".repeat(15_000)})
            .to_string()
            .as_bytes(),
        422,
        "validation_failed",
    );
    both_refuse(
        &gw,
        json!({"email": email(), "password": "p".repeat(20_000)})
            .to_string()
            .as_bytes(),
        413,
        "payload_too_large",
    );
    // deeply nested JSON: well-formed, so 422, refused at the parser's depth limit (128) with
    // no stack overflow
    let deep = format!("{{\"email\":{}{}}}", "[".repeat(8000), "]".repeat(8000));
    let v = both_refuse(&gw, deep.as_bytes(), 422, "validation_failed");
    assert!(
        v["errors"]["body"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{v}"
    );
    let deep = format!("{}1{}", "{\"a\":".repeat(2500), "}".repeat(2500));
    both_refuse(&gw, deep.as_bytes(), 422, "validation_failed");

    assert_eq!(
        db.emails(gw.dir.path()),
        vec![anchor.clone()],
        "a hostile body stored something"
    );
    // the account that was there still works
    let r = post(
        &gw,
        "/api/v1/auth/signin",
        &json!({"email": anchor, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// SQL meta-characters are data: an address full of them is stored byte for byte, signs in,
/// matches nothing else (no `LIKE` wildcards), and no other row or table changes.
fn sql_metacharacters_are_stored_literally(store: Store) {
    let (gw, db) = identity_gateway(store);
    let anchor = email();
    assert_eq!(
        post(
            &gw,
            "/api/v1/auth/register",
            &json!({"email": anchor, "password": PASSWORD})
        )
        .status,
        201
    );
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let nasty = [
        format!("x'or'1'='1-{tag}@example.com"),
        format!("a\";DROP/**/TABLE/**/users;--{tag}@example.com"),
        format!("b');DELETE/**/FROM/**/users;--{tag}@example.com"),
        format!("%_{tag}\\@example.com"),
    ];
    for mail in &nasty {
        let r = post(
            &gw,
            "/api/v1/auth/register",
            &json!({"email": mail, "password": PASSWORD}),
        );
        assert_eq!(r.status, 201, "{mail}: {}", r.text());
        assert_eq!(r.json()["user"]["email"], mail.as_str());
        let r = post(
            &gw,
            "/api/v1/auth/signin",
            &json!({"email": mail, "password": PASSWORD}),
        );
        assert_eq!(r.status, 200, "{mail}: {}", r.text());
    }
    // wildcards and injections in a sign-in match nothing
    for probe in [
        "%@example.com".to_owned(),
        "_%@example.com".to_owned(),
        "x' OR '1'='1".to_owned(),
        format!("{anchor}' --"),
        "'or''='@example.com".to_owned(),
    ] {
        let r = post(
            &gw,
            "/api/v1/auth/signin",
            &json!({"email": probe, "password": PASSWORD}),
        );
        assert!(
            r.status == 401 || r.status == 422,
            "{probe}: {} {}",
            r.status,
            r.text()
        );
    }
    let mut expected = vec![anchor.clone()];
    expected.extend(nasty.iter().cloned());
    let mut stored = db.emails(gw.dir.path());
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected);
    // registering the literal again is a conflict, case-insensitively
    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": nasty[0].to_uppercase(), "password": PASSWORD}),
    );
    assert_problem(&r, 409, "email_taken");
}

/// Look-alike addresses: the rule is ASCII only (README "Email"). Cyrillic letters, fullwidth
/// `@`, zero-width characters, NFKC-foldable forms and IDN domains as Unicode are 422; the
/// punycode spelling of a domain is accepted. None can shadow an existing account.
fn unicode_look_alike_emails_are_422_and_punycode_is_accepted(store: Store) {
    let (gw, db) = identity_gateway(store);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let admin = format!("admin-{tag}@example.com");
    assert_eq!(
        post(
            &gw,
            "/api/v1/auth/register",
            &json!({"email": admin, "password": PASSWORD})
        )
        .status,
        201
    );
    for spoof in [
        format!("\u{430}dmin-{tag}@example.com"),   // Cyrillic а
        format!("admin-{tag}\u{FF20}example.com"),  // fullwidth @
        format!("admin-{tag}@example\u{FF0E}com"),  // fullwidth .
        format!("ad\u{200B}min-{tag}@example.com"), // zero-width space
        format!("admin-{tag}\u{200D}@example.com"), // zero-width joiner
        format!("\u{FEFF}admin-{tag}@example.com"), // BOM
        format!("\u{FF41}dmin-{tag}@example.com"),  // fullwidth a (NFKC → a)
        format!("admin-{tag}@\u{212A}example.com"), // Kelvin sign (lower-cases to k)
        format!("admin-{tag}@ex\u{0430}mple.com"),  // Cyrillic in the domain
        format!("admin-{tag}@b\u{FC}cher.example"), // IDN as Unicode
        format!("admin-{tag}@example.com\u{0301}"), // combining accent
        format!("admin-{tag}@example.com\u{00A0}"), // NBSP (not trimmed as ASCII)
        format!("\u{202E}moc.elpmaxe@{tag}-nimda"), // right-to-left override
    ] {
        for path in ["/api/v1/auth/register", "/api/v1/auth/signin"] {
            let r = post(&gw, path, &json!({"email": spoof, "password": PASSWORD}));
            let v = assert_problem(&r, 422, "validation_failed");
            assert!(v["errors"]["email"].is_string(), "{spoof:?}: {v}");
        }
    }
    // punycode is plain ASCII: accepted, and distinct from the Unicode spelling
    let puny = format!("admin-{tag}@xn--bcher-kva.example");
    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": puny, "password": PASSWORD}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // leading/trailing ASCII white space is trimmed: the same account, a conflict
    let r = post(
        &gw,
        "/api/v1/auth/register",
        &json!({"email": format!(" \t{}\n", admin.to_uppercase()), "password": PASSWORD}),
    );
    assert_problem(&r, 409, "email_taken");
    let mut stored = db.emails(gw.dir.path());
    stored.sort();
    let mut expected = vec![admin, puny];
    expected.sort();
    assert_eq!(stored, expected);
}

on_both_stores!(
    hostile_bodies_are_4xx_and_store_nothing,
    sql_metacharacters_are_stored_literally,
    unicode_look_alike_emails_are_422_and_punycode_is_accepted,
);
