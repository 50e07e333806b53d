//! Long-lived connections end with their token (CONTRACT 13), black-box: the real gateway in
//! front of an upstream started here that speaks WebSocket (tungstenite, echoing) and
//! Server-Sent Events (an event every 100 ms, chunked; or as fast as it is read), and real clients: tungstenite's
//! WebSocket client, a raw HTTP/1.1 reader of the event stream, and `curl --http2` reading it
//! over TLS (HTTP/2 by ALPN). Tokens expire a few seconds in (`leeway_secs = 0`), or are
//! signed out.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::config::TestConfig;
use common::db::{Db, Store};
use common::tls::{Cert, curl_base, run_tool};
use common::*;
use serde_json::json;

/// The upstream: `/ws` upgrades and echoes every message; `/events` streams an event every
/// 100 ms until the connection breaks.
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || serve(s));
        }
    });
    addr
}

fn serve(s: TcpStream) {
    let mut peek = [0u8; 16];
    let n = s.peek(&mut peek).unwrap_or(0);
    if peek[..n].starts_with(b"GET /ws") {
        let Ok(mut ws) = tungstenite::accept(s) else {
            return;
        };
        while let Ok(m) = ws.read() {
            if (m.is_text() || m.is_binary()) && ws.send(m).is_err() {
                return;
            }
        }
        return;
    }
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while r.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let mut s = s;
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n\
                transfer-encoding: chunked\r\n\r\n";
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    if peek[..n].starts_with(b"GET /flood") {
        // As fast as the reader takes it: 16 KiB chunks until the connection breaks.
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
        while s.write_all(chunk.as_bytes()).is_ok() {}
        return;
    }
    for i in 0.. {
        let event = format!("data: {i}\n\n");
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if s.write_all(chunk.as_bytes()).is_err() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A gateway with `leeway_secs = 0` in front of [`upstream`], the identity endpoints on.
fn gateway() -> Gateway {
    gateway_on(upstream(), None)
}

/// [`gateway`] in front of `up`, on the store at `store` (SQLite of its own when `None`).
fn gateway_on(up: SocketAddr, store: Option<&str>) -> Gateway {
    Gateway::start(&config_on(up, store).build(), &[])
}

/// The config of [`gateway_on`].
fn config_on(up: SocketAddr, store: Option<&str>) -> TestConfig {
    let mut config = TestConfig::new();
    if let Some(url) = store {
        config = config.store(url);
    }
    config
        .tokens(
            r#"[tokens]
algorithm = "HS256"
secret_env = "PORTCULLIS_TEST_SECRET"
ttl_secs = 3600
issuer = "portcullis"
audience = "portcullis"
leeway_secs = 0
"#,
        )
        .cookie("secure = false")
        .fast_bcrypt()
        .no_rate_limits()
        .upstream("live", &format!("\"{up}\""), &[])
        .route("/ws", "live", "required", &[])
        .route("/events", "live", "required", &[])
        .route("/flood", "live", "required", &[])
        .route("/open/{*rest}", "live", "public", &[])
}

/// A token of a fresh user expiring `secs` from now.
fn expiring_in(secs: u64) -> (String, u64) {
    let exp = u64::try_from(now()).unwrap() + secs;
    let token = hs256(&claims_with(&new_sub(), |c| {
        c.insert("exp".into(), json!(exp));
    }));
    (token, exp)
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn websocket(gw: &Gateway, token: &str) -> Ws {
    use tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, response) = tungstenite::connect(req).expect("the upgrade passes");
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
    }
    ws
}

/// Echoes through `ws` until the gateway ends it: when, and the close frame it sent.
fn echo_until_closed(
    ws: &mut Ws,
    within: Duration,
) -> (Instant, Option<tungstenite::protocol::CloseFrame>) {
    let deadline = Instant::now() + within;
    let mut sent = 0u32;
    let mut last_sent: Option<Instant> = None;
    loop {
        assert!(Instant::now() < deadline, "the connection is still open");
        if last_sent.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            sent += 1;
            if ws
                .send(tungstenite::Message::text(format!("m{sent}")))
                .is_err()
            {
                return (Instant::now(), None);
            }
            last_sent = Some(Instant::now());
        }
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return (Instant::now(), frame),
            Ok(m) => assert!(m.is_text(), "{m:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (Instant::now(), None),
        }
    }
}

/// When `exp` (seconds after the epoch) is, as an instant of this clock.
fn instant_of(exp: u64) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let left = u128::from(exp) * 1000 - now_ms.min(u128::from(exp) * 1000);
    Instant::now() + Duration::from_millis(u64::try_from(left).unwrap())
}

/// An end by the token is the gateway's own doing: counted, never an error or warning line.
#[track_caller]
fn assert_not_logged_as_a_failure(gw: &Gateway) {
    thread::sleep(Duration::from_millis(100)); // the log writer's batch
    let log = gw.stderr();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Fail to proxy") || l.contains("after end of stream"))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    // Nor an error response the gateway made (a 400 where the stream already ended).
    let metrics = get(gw.admin, "/metrics", &[]).text();
    assert!(
        !metrics.contains("portcullis_rejections_total{"),
        "{metrics}"
    );
}

fn closed(gw: &Gateway, reason: &str) -> u64 {
    let name = format!(r#"portcullis_connections_closed_total{{reason="{reason}"}}"#);
    get(gw.admin, "/metrics", &[])
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_websocket_is_closed_with_1008_when_its_token_expires() {
    let gw = gateway();
    let (token, exp) = expiring_in(3);
    let mut ws = websocket(&gw, &token);
    let expires = instant_of(exp);
    let (at, frame) = echo_until_closed(&mut ws, Duration::from_secs(10));
    let late = at.saturating_duration_since(expires);
    eprintln!("websocket closed {late:?} after exp (+ leeway 0)");
    assert!(
        at + Duration::from_millis(50) >= expires,
        "not before the expiry"
    );
    assert!(
        late < Duration::from_secs(1),
        "within a second of the expiry: {late:?}"
    );
    let frame = frame.expect("a close frame: a clean close");
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "token expired");
    assert_eq!(closed(&gw, "expired"), 1);
    // The token is refused (from the next second on: `exp` is checked in whole seconds).
    thread::sleep(instant_of(exp + 1).saturating_duration_since(Instant::now()));
    let r = gw.get("/ws", &[("Authorization", &format!("Bearer {token}"))]);
    assert_401(&r, "token_expired", true);
}

/// Registers a user through `gw`: its token.
fn register(gw: &Gateway) -> String {
    let email = format!("{}@example.test", &new_sub()[..8]);
    let body = json!({"email": email, "password": "correct horse battery"}).to_string();
    let r = post(gw, "/api/v1/auth/register", &[], &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_owned()
}

fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    gw.raw(&request_bytes("POST", path, &h, Some(body.as_bytes())))
}

/// Signs `token` out through `gw` (`?scope=all` when `all`): when.
fn sign_out(gw: &Gateway, token: &str, all: bool) -> Instant {
    let auth = format!("Bearer {token}");
    let path = if all {
        "/api/v1/auth/signout?scope=all"
    } else {
        "/api/v1/auth/signout"
    };
    let r = post(gw, path, &[("Authorization", &auth)], "");
    assert_eq!(r.status, 204, "{}", r.text());
    Instant::now()
}

/// `ws` is closed by the gateway within a second of `since`, with 1008 "token revoked".
#[track_caller]
fn closed_as_revoked(ws: &mut Ws, since: Instant, what: &str) {
    let (at, frame) = echo_until_closed(ws, Duration::from_secs(5));
    let late = at.saturating_duration_since(since);
    eprintln!("websocket closed {late:?} after {what}");
    assert!(late < Duration::from_secs(1), "{what}: {late:?}");
    let frame = frame.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "token revoked");
}

/// `ws` still echoes.
#[track_caller]
fn still_open(ws: &mut Ws) {
    ws.send(tungstenite::Message::text("still here")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match ws.read() {
            Ok(m) if m.is_text() => return,
            Ok(m) => panic!("{m:?}"),
            Err(tungstenite::Error::Io(_)) if Instant::now() < deadline => {}
            Err(e) => panic!("the connection broke: {e}"),
        }
    }
}

#[test]
fn a_websocket_is_closed_when_its_user_signs_out_and_others_stay_open() {
    let gw = gateway();
    let token = register(&gw);
    let (other, _) = expiring_in(3600);
    let mut mine = websocket(&gw, &token);
    let mut theirs = websocket(&gw, &other);
    thread::sleep(Duration::from_millis(300));
    let signed_out = sign_out(&gw, &token, false);
    closed_as_revoked(&mut mine, signed_out, "sign-out");
    assert_eq!(closed(&gw, "revoked"), 1);
    still_open(&mut theirs);
}

#[test]
fn sign_out_everywhere_on_another_replica_closes_every_websocket_of_the_user() {
    let db = Db::new(Store::Postgres);
    let up = upstream();
    let a = gateway_on(up, Some(&db.url));
    let b = gateway_on(up, Some(&db.url));
    let first = register(&a);
    // A second session of the same user, signed in through the other replica.
    let me = json!({"email": claims_of(&first)["email"], "password": "correct horse battery"});
    let r = post(&b, "/api/v1/auth/signin", &[], &me.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let second = r.json()["token"].as_str().unwrap().to_owned();
    let mut on_a = websocket(&a, &first);
    let mut also_on_a = websocket(&a, &second);
    let (other, _) = expiring_in(3600);
    let mut someone_else = websocket(&a, &other);
    thread::sleep(Duration::from_millis(300));

    let signed_out = sign_out(&b, &second, true);
    closed_as_revoked(&mut on_a, signed_out, "scope=all on another replica");
    closed_as_revoked(&mut also_on_a, signed_out, "scope=all on another replica");
    assert_eq!(closed(&a, "revoked"), 2);
    still_open(&mut someone_else);
}

/// The claims of a token (unverified: the test's own).
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn an_event_stream_ends_with_its_last_chunk_when_its_token_expires() {
    let gw = gateway();
    let (token, exp) = expiring_in(2);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "GET /events HTTP/1.1\r\nhost: t\r\naccept: text/event-stream\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let expires = instant_of(exp);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the stream ended with an error, not a close: {e}"),
        }
    }
    let at = Instant::now();
    let late = at.saturating_duration_since(expires);
    eprintln!("event stream ended {late:?} after exp");
    assert!(late < Duration::from_secs(1), "{late:?}");
    assert!(at + Duration::from_millis(50) >= expires);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("data: 5"), "events flowed: {text}");
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "the response ends with its last chunk: {:?}",
        &text[text.len().saturating_sub(40)..]
    );
    assert_eq!(closed(&gw, "expired"), 1);
    assert_not_logged_as_a_failure(&gw);
}

/// Another issuer's token (EdDSA by JWKS) has no revocation here, but its expiry holds.
#[test]
fn a_websocket_of_another_issuers_token_is_closed_when_it_expires() {
    let (jwks, _) = ed25519_jwks_server("ext1");
    let config = config_on(upstream(), None)
        .section(&format!(
            "[[issuer]]\nname = \"ext\"\njwks_url = \"{jwks}\"\nissuer = \"https://ext.example\"\n\
             audience = \"ext-aud\"\n"
        ))
        .build();
    let gw = Gateway::start(&config, &[]);
    gw.wait_ready(Duration::from_secs(5), "the issuer's first fetch");
    let exp = u64::try_from(now()).unwrap() + 2;
    let token = sign_pem(
        jsonwebtoken::Algorithm::EdDSA,
        "ed25519.pem",
        Some("ext1"),
        &claims_with(&new_sub(), |c| {
            c.insert("iss".into(), json!("https://ext.example"));
            c.insert("aud".into(), json!("ext-aud"));
            c.insert("exp".into(), json!(exp));
            c.remove("jti");
        }),
    );
    let mut ws = websocket(&gw, &token);
    let expires = instant_of(exp);
    let (at, frame) = echo_until_closed(&mut ws, Duration::from_secs(10));
    let late = at.saturating_duration_since(expires);
    eprintln!("external token's websocket closed {late:?} after exp");
    assert!(at + Duration::from_millis(50) >= expires, "not before exp");
    assert!(late < Duration::from_secs(1), "{late:?}");
    let frame = frame.expect("a close frame");
    assert_eq!(frame.reason.as_str(), "token expired");
    assert_eq!(closed(&gw, "expired"), 1);
}

/// A client that has stopped reading (its buffers full of a fast stream) cannot take the
/// closing bytes: it is disconnected all the same, within the grace of a second.
#[test]
fn a_client_that_stops_reading_is_still_disconnected_at_expiry() {
    let gw = gateway();
    let (token, exp) = expiring_in(2);
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let req = format!("GET /flood HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // Not a byte read until well after exp + the grace.
    let expires = instant_of(exp);
    thread::sleep(expires.saturating_duration_since(Instant::now()) + Duration::from_millis(1500));
    assert_eq!(closed(&gw, "expired"), 1, "ended at exp");
    // What was buffered drains, then the connection is over: EOF or a reset, never a hang.
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut drained = 0usize;
    let bound = Instant::now() + Duration::from_secs(3);
    loop {
        assert!(
            Instant::now() < bound,
            "still flowing after {drained} bytes: the connection was never ended"
        );
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the connection was left open after {drained} bytes: {e}"
                );
                break;
            }
        }
    }
    eprintln!("a client that stopped reading: {drained} bytes were buffered, then the end");
    assert!(drained > 0, "the stream had filled the buffers");
}

#[test]
fn connections_without_identity_or_with_a_length_are_not_ended() {
    let gw = gateway();
    // A public stream has no token to end with: still flowing after 1.5 s.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /open/events HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(s.read(&mut buf).unwrap() > 0, "the public stream flows");
    }
    assert_eq!(closed(&gw, "expired") + closed(&gw, "revoked"), 0);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: each stream is ended by its session (END_STREAM), the connection and its other
// streams carry on.
// ---------------------------------------------------------------------------------------------

/// A TLS gateway (HTTP/2 by ALPN) in front of a fresh [`upstream`].
fn h2_gateway(cert: &Cert) -> Gateway {
    let config = config_on(upstream(), None)
        .server("grace_period_secs = 0")
        .server_table("[server.tls]\ncert_file = \"{CERT}\"\nkey_file = \"{KEY}\"\n")
        .build();
    Gateway::start_with(&config, &[], &cert.vars(&cert.key()))
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr.port())
}

/// `curl --http2` POSTing `body` to `path` with `headers`: the response body.
fn h2_post(gw: &Gateway, cert: &Cert, path: &str, headers: &[&str], body: &str) -> String {
    let mut args = curl_base(gw.addr.port(), cert);
    args.extend(
        [
            "--http2",
            "--fail-with-body",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
        ]
        .map(str::to_owned),
    );
    for h in headers {
        args.extend(["-H".to_owned(), (*h).to_owned()]);
    }
    args.extend(["--data-binary".to_owned(), body.to_owned(), https(gw, path)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_tool("curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{path}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A streamed response read over TLS by `curl -N` until it ends (at most 15 s): HTTP/2 by
/// ALPN ([`TlsStream::open`]), or HTTP/1.1 ([`TlsStream::open_with`]).
struct TlsStream {
    child: std::process::Child,
    ended: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl TlsStream {
    fn open(gw: &Gateway, cert: &Cert, path: &str, token: &str) -> TlsStream {
        Self::open_with(gw, cert, "--http2", path, token)
    }

    fn open_with(gw: &Gateway, cert: &Cert, protocol: &str, path: &str, token: &str) -> TlsStream {
        let mut args = curl_base(gw.addr.port(), cert);
        args.extend(
            [
                protocol,
                "-N",
                "--max-time",
                "15",
                "-w",
                "\n%{http_version} %{exitcode}",
            ]
            .map(str::to_owned),
        );
        args.extend([
            "-H".to_owned(),
            format!("authorization: Bearer {token}"),
            https(gw, path),
        ]);
        let mut child = std::process::Command::new("curl")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the HTTP/2 tests need curl (apt-get install -y curl)");
        let mut out = child.stdout.take().unwrap();
        let (tx, ended) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The body comes first, then curl's own line: the body's end is the first read
            // carrying that line; EOF comes when curl exits.
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send((Instant::now(), String::from_utf8_lossy(&got).into_owned()));
        });
        TlsStream { child, ended }
    }

    /// Waits for the end: when, the body, and curl's `HTTP-version exit-code` line.
    fn ended(mut self, within: Duration) -> (Instant, String, String) {
        let (at, text) = self.ended.recv_timeout(within).unwrap_or_else(|_| {
            let _ = self.child.kill();
            panic!("the HTTP/2 stream was not ended within {within:?}")
        });
        let _ = self.child.wait();
        let (body, tail) = text.rsplit_once('\n').unwrap_or_default();
        (at, body.to_owned(), tail.to_owned())
    }

    fn still_flowing(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn an_http2_event_stream_ends_with_end_stream_when_its_token_expires() {
    let cert = Cert::generate();
    let gw = h2_gateway(&cert);
    let (token, exp) = expiring_in(2);
    let (forever, _) = expiring_in(3600);
    let stream = TlsStream::open(&gw, &cert, "/events", &token);
    let mut other = TlsStream::open(&gw, &cert, "/events", &forever);
    let expires = instant_of(exp);
    let (at, body, curl) = stream.ended(Duration::from_secs(10));
    let late = at.saturating_duration_since(expires);
    eprintln!("HTTP/2 event stream ended {late:?} after exp");
    assert!(at + Duration::from_millis(50) >= expires, "not before exp");
    assert!(late < Duration::from_secs(1), "{late:?}");
    // HTTP/2, exit code 0: the stream ended cleanly (a reset would be curl's 92).
    assert_eq!(curl, "2 0", "{body}");
    assert!(body.contains("data: 5"), "events flowed: {body}");
    assert_eq!(closed(&gw, "expired"), 1);
    assert!(
        other.still_flowing(),
        "a stream of a token still valid flows on"
    );
    assert_not_logged_as_a_failure(&gw);
}

/// Over TLS, HTTP/1.1 is wrapped like plain HTTP/1.1: its event stream ends with its last
/// chunk at the token's expiry.
#[test]
fn an_event_stream_over_tls_http1_1_ends_with_its_last_chunk_when_its_token_expires() {
    let cert = Cert::generate();
    let gw = h2_gateway(&cert);
    let (token, exp) = expiring_in(2);
    let stream = TlsStream::open_with(&gw, &cert, "--http1.1", "/events", &token);
    let expires = instant_of(exp);
    let (at, body, curl) = stream.ended(Duration::from_secs(10));
    let late = at.saturating_duration_since(expires);
    eprintln!("HTTP/1.1-over-TLS event stream ended {late:?} after exp");
    assert!(at + Duration::from_millis(50) >= expires, "not before exp");
    assert!(late < Duration::from_secs(1), "{late:?}");
    // HTTP/1.1, exit code 0: the chunked body ended with its last chunk (a cut is curl's 18).
    assert_eq!(curl, "1.1 0", "{body}");
    assert!(body.contains("data: 5"), "events flowed: {body}");
    assert_eq!(closed(&gw, "expired"), 1);
    assert_not_logged_as_a_failure(&gw);
}

#[test]
fn an_http2_event_stream_ends_when_its_user_signs_out() {
    let cert = Cert::generate();
    let gw = h2_gateway(&cert);
    let email = format!("{}@example.test", &new_sub()[..8]);
    let creds = json!({"email": email, "password": "correct horse battery"}).to_string();
    let registered: serde_json::Value =
        serde_json::from_str(&h2_post(&gw, &cert, "/api/v1/auth/register", &[], &creds)).unwrap();
    let token = registered["token"].as_str().unwrap().to_owned();
    let stream = TlsStream::open(&gw, &cert, "/events", &token);
    thread::sleep(Duration::from_millis(500));
    // From before the sign-out request (curl's start and TLS handshake included): an upper bound.
    let signed_out = Instant::now();
    h2_post(
        &gw,
        &cert,
        "/api/v1/auth/signout",
        &[&format!("authorization: Bearer {token}")],
        "",
    );
    let (at, body, curl) = stream.ended(Duration::from_secs(5));
    let late = at.saturating_duration_since(signed_out);
    eprintln!("HTTP/2 event stream ended {late:?} after the sign-out request began");
    assert!(late < Duration::from_secs(1), "{late:?}");
    assert_eq!(curl, "2 0", "{body}");
    assert!(body.contains("data: 1"), "events flowed: {body}");
    assert_eq!(closed(&gw, "revoked"), 1);
}

#[test]
fn a_public_http2_event_stream_is_not_ended() {
    let cert = Cert::generate();
    let gw = h2_gateway(&cert);
    let mut stream = TlsStream::open(&gw, &cert, "/open/events", "none");
    thread::sleep(Duration::from_millis(1500));
    assert!(stream.still_flowing());
    assert_eq!(closed(&gw, "expired") + closed(&gw, "revoked"), 0);
}
