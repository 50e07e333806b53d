//! A tiny HTTP/1.1 echo upstream: it answers every request with the method, target, headers
//! and body it received, as JSON. The demo puts it behind the gateway; the tests use it to see
//! exactly what crossed the edge. Not a general web server: keep-alive and Content-Length or
//! chunked bodies, nothing more.
//!
//! One exception: `GET /app/` and `GET /app/index.html` (query ignored) answer the static page
//! of `e2e/app/index.html`, a plain-JS client of the identity endpoints that the browser test
//! drives. Every other request, `/app/...` included, is echoed.

use std::net::SocketAddr;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// The browser test's page, served at `/app/` and `/app/index.html`.
pub const APP_PAGE: &str = include_str!("../e2e/app/index.html");

/// Whether a request gets [`APP_PAGE`] instead of the echo.
fn is_app_page(method: &str, target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    matches!(method, "GET" | "HEAD") && matches!(path, "/app/" | "/app/index.html")
}

#[derive(Serialize)]
struct Echo<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
    body: String,
}

/// Starts an echo upstream on 127.0.0.1 (port chosen by the OS) on its own thread.
pub fn spawn() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo upstream");
    let addr = listener.local_addr().expect("echo address");
    listener
        .set_nonblocking(true)
        .expect("nonblocking echo listener");
    std::thread::Builder::new()
        .name("echo-upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("echo runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("echo listener");
                serve(listener).await;
            });
        })
        .expect("spawn echo thread");
    addr
}

/// Serves connections until the listener fails.
pub async fn serve(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

async fn connection(stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let n = reader.read_until(b'\n', &mut head).await?;
            if n == 0 || head.len() > MAX_HEAD {
                return Ok(());
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            return Ok(());
        }
        let get = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        let close = get("connection").is_some_and(|c| c == "close") || req.version == Some(0);
        let chunked = get("transfer-encoding").is_some_and(|t| t.contains("chunked"));
        let length: usize = get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let body = if chunked {
            read_chunked(&mut reader).await?
        } else {
            let mut b = vec![0; length.min(MAX_BODY)];
            reader.read_exact(&mut b).await?;
            b
        };
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("");
        let connection = if close { "connection: close\r\n" } else { "" };
        if is_app_page(method, target) {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                 content-length: {}\r\ncache-control: no-store\r\n\
                 content-security-policy: default-src 'none'; script-src 'unsafe-inline'; \
                 style-src 'unsafe-inline'; connect-src 'self'\r\n{connection}\r\n",
                APP_PAGE.len()
            )
            .into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(APP_PAGE.as_bytes());
            }
            reader.get_mut().write_all(&out).await?;
            if close {
                return Ok(());
            }
            continue;
        }
        let echo = Echo {
            method,
            path: target,
            headers: req
                .headers
                .iter()
                .map(|h| (h.name, String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let json = serde_json::to_vec(&echo).unwrap_or_default();
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}\r\n",
            json.len(),
        )
        .into_bytes();
        out.extend_from_slice(&json);
        reader.get_mut().write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_chunked(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            let mut trailer = String::new();
            while reader.read_line(&mut trailer).await? > 2 {
                trailer.clear();
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(std::io::Error::other("body too large"));
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).await?;
        body.truncate(start + size);
    }
}
