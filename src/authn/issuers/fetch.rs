//! One bounded `GET` of a JWKS document, on hyper's HTTP/1.1 client, over TCP or TLS (rustls,
//! platform roots, certificate and host name verified). hyper does the HTTP (framing by
//! `Content-Length`, chunks or close); the rules are ours: one request per connection
//! (`Connection: close`), a deadline over the whole exchange, a cap on the head and the body,
//! and no redirects. Which URLs may be fetched at all (https anywhere, http only to a loopback
//! host, no credentials in the URL) is decided by the config (`config::JwksUrl`).
//!
//! Redirects are not followed: a `3xx` is a failed fetch whose log line names the `Location`,
//! so the operator points `jwks_url` at the final address. Following them would let whoever
//! answers at the configured URL send the gateway anywhere, for a document that decides whose
//! tokens are trusted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::JwksUrl as Target;

/// Largest JWKS body accepted. A set of a few keys is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest response head accepted (hyper's read buffer; 8 KiB is its least).
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A fetched document and what its `Cache-Control` says.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    /// `max-age` in seconds; `Some(0)` for `no-store` / `no-cache`.
    pub max_age: Option<u64>,
}

/// Why a fetch failed: `kind` is a bounded metric label, `detail` goes to the log.
#[derive(Debug)]
pub struct FetchError {
    pub kind: &'static str,
    pub detail: String,
}

impl FetchError {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Makes fetches; holds the TLS configuration (platform roots, loaded once).
#[derive(Debug, Clone)]
pub struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// Whether it can fetch over https.
    pub const fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A client; `Err` (with the reason) when TLS is needed and no root certificate is found,
    /// in which case https fetches fail and say why.
    pub fn new(need_tls: bool) -> Result<Self, String> {
        if !need_tls {
            return Ok(Self { tls: None });
        }
        let mut roots = rustls::RootCertStore::empty();
        let certs = crate::tls::platform_roots()?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("no usable platform root certificate".into());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: Some(Arc::new(config)),
        })
    }

    /// GETs `target` within `timeout`.
    pub async fn get(&self, target: &Target, timeout: Duration) -> Result<Fetched, FetchError> {
        tokio::time::timeout(timeout, self.exchange(target))
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::new(
                    "timeout",
                    format!("no complete answer within {timeout:?}"),
                ))
            })
    }

    async fn exchange(&self, target: &Target) -> Result<Fetched, FetchError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| FetchError::new("connect", format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if !target.tls {
            return get(tcp, target).await;
        }
        let config = self
            .tls
            .clone()
            .ok_or_else(|| FetchError::new("tls", "no TLS configuration (no root certificates)"))?;
        let name = ServerName::try_from(target.host.clone())
            .map_err(|_| FetchError::new("tls", "invalid server name"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::new("tls", format!("TLS: {e}")))?;
        get(stream, target).await
    }
}

/// The one request of a connection, and its answer read within the caps.
async fn get<S>(stream: S, target: &Target) -> Result<Fetched, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::new("http", format!("HTTP handshake: {e}")))?;
    let request = http::Request::get(target.path_and_query.as_str())
        .header(HOST, target.authority.as_str())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(
            USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| FetchError::new("http", format!("request: {e}")))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_error(&e))?;
        read(response).await
    };
    // The connection is driven here, beside the exchange, and dropped with it: nothing of a
    // fetch outlives its deadline.
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = &mut exchange => result,
        ended = &mut conn => match ended {
            // Closed after (or while) answering: what was read is the exchange's to judge.
            Ok(()) => exchange.await,
            Err(e) => Err(http_error(&e)),
        },
    }
}

/// The status, the caching and the body (at most [`MAX_BODY_BYTES`]) of an answer.
async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Fetched, FetchError> {
    let status = response.status().as_u16();
    let headers = response.headers();
    if (300..400).contains(&status) {
        let location: Option<String> = headers.get(LOCATION).map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(200)
                .filter(|c| !c.is_control())
                .collect()
        });
        return Err(FetchError::new(
            "redirect",
            format!(
                "answered {status} to {}; redirects are not followed: point jwks_url at the final URL",
                location.as_deref().unwrap_or("(no Location)")
            ),
        ));
    }
    if status != 200 {
        return Err(FetchError::new("status", format!("answered {status}")));
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let max_age = max_age(headers.get_all(CACHE_CONTROL));
    let mut body = response.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| http_error(&e))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(Fetched { body: buf, max_age })
}

/// `max-age` in seconds; `Some(0)` for `no-store` / `no-cache` (which win over `max-age`).
fn max_age(values: http::header::GetAll<'_, http::HeaderValue>) -> Option<u64> {
    let mut max_age = None;
    for value in values {
        for directive in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let d = directive.trim().to_ascii_lowercase();
            if d == "no-store" || d == "no-cache" {
                return Some(0);
            }
            if let Some(v) = d.strip_prefix("max-age=") {
                max_age = v.trim_matches('"').parse::<u64>().ok().or(max_age);
            }
        }
    }
    max_age
}

/// hyper's error, as a fetch failure: the head too large, the connection cut, or bad HTTP.
fn http_error(e: &hyper::Error) -> FetchError {
    // hyper names "too large" by a predicate only for servers; its message says it.
    if e.is_parse() && e.to_string().contains("too large") {
        FetchError::new("too_large", "response head too large")
    } else if e.is_incomplete_message()
        || e.is_closed()
        || std::error::Error::source(e).is_some_and(<dyn std::error::Error>::is::<std::io::Error>)
    {
        FetchError::new("io", format!("connection closed early: {e}"))
    } else {
        FetchError::new("http", e.to_string())
    }
}

fn too_large() -> FetchError {
    FetchError::new(
        "too_large",
        format!("body larger than {MAX_BODY_BYTES} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// What `get` makes of a peer that answers `raw` (after reading the request).
    fn fetch_from(raw: Vec<u8>) -> Result<Fetched, FetchError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let (client, mut server) = tokio::io::duplex(256 * 1024);
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = server.read(&mut request).await;
                    let _ = server.write_all(&raw).await;
                    let _ = server.shutdown().await;
                });
                let target = Target::parse("http://127.0.0.1:1/jwks").unwrap();
                get(client, &target).await
            })
    }

    fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in body.chunks(chunk) {
            raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            raw.extend_from_slice(c);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        raw
    }

    #[test]
    fn chunked_bodies_are_reassembled_and_bounded() {
        let got = fetch_from(chunked(b"abcde", 3)).unwrap();
        assert_eq!(got.body, b"abcde");
        let big = vec![b'x'; MAX_BODY_BYTES + 1];
        assert_eq!(
            fetch_from(chunked(&big, 4096)).unwrap_err().kind,
            "too_large"
        );
        let cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab".to_vec();
        assert_eq!(fetch_from(cut).unwrap_err().kind, "io");
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec();
        assert!(fetch_from(bad).is_err());
    }

    #[test]
    fn bodies_by_length_or_close_are_read_within_the_cap() {
        let got = fetch_from(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec()).unwrap();
        assert_eq!(got.body, b"abc");
        let got = fetch_from(b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec()).unwrap();
        assert_eq!(got.body, b"until close");
        let declared = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(
            fetch_from(declared.into_bytes()).unwrap_err().kind,
            "too_large"
        );
        let mut endless = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        endless.resize(endless.len() + MAX_BODY_BYTES + 1, b'x');
        assert_eq!(fetch_from(endless).unwrap_err().kind, "too_large");
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            head.extend_from_slice(format!("X-Filler-{i}: yyyyyyyy\r\n").as_bytes());
        }
        assert_eq!(fetch_from(head).unwrap_err().kind, "too_large");
    }

    #[test]
    fn redirects_and_other_statuses_fail_naming_what_came() {
        let e = fetch_from(
            b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
        .unwrap_err();
        assert_eq!(e.kind, "redirect");
        assert!(e.detail.contains("https://elsewhere/"), "{}", e.detail);
        let e = fetch_from(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec()).unwrap_err();
        assert_eq!(e.kind, "status");
        assert_eq!(
            fetch_from(b"not http at all\r\n\r\n".to_vec())
                .unwrap_err()
                .kind,
            "http"
        );
    }

    #[test]
    fn cache_control_gives_max_age_and_no_store_means_zero() {
        let h = |v: &'static [u8]| {
            let mut headers = http::HeaderMap::new();
            headers.insert(CACHE_CONTROL, http::HeaderValue::from_bytes(v).unwrap());
            max_age(headers.get_all(CACHE_CONTROL))
        };
        assert_eq!(h(b"public, max-age=600"), Some(600));
        assert_eq!(h(b"no-store"), Some(0));
        assert_eq!(h(b"private"), None);
    }
}
