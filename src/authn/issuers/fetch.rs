//! One bounded HTTP/1.1 `GET` of a JWKS document, over TCP or TLS (rustls, platform roots,
//! certificate and host name verified). Small on purpose: one request per connection
//! (`Connection: close`), a deadline over the whole exchange, a cap on the head and the body,
//! `Content-Length`, chunked or read-to-close framing, and no redirects.
//!
//! Redirects are not followed: a `3xx` is a failed fetch whose log line names the `Location`,
//! so the operator points `jwks_url` at the final address. Following them would let whoever
//! answers at the configured URL send the gateway anywhere, for a document that decides whose
//! tokens are trusted.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::JwksUrl as Target;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest JWKS body accepted. A set of a few keys is a few KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest response head accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

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
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/jwk-set+json, application/json\r\n\
             User-Agent: portcullis/{}\r\nConnection: close\r\n\r\n",
            target.path_and_query,
            target.authority,
            env!("CARGO_PKG_VERSION")
        );
        if !target.tls {
            return exchange(tcp, request.as_bytes()).await;
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
        exchange(stream, request.as_bytes()).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> Result<Fetched, FetchError> {
    let io = |e: std::io::Error| FetchError::new("io", e.to_string());
    s.write_all(request).await.map_err(io)?;
    s.flush().await.map_err(io)?;

    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 8 * 1024];
    let (head_len, status, framing, max_age, location) = loop {
        let n = s.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(FetchError::new(
                "io",
                "connection closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let (framing, max_age, location) = read_head(resp.headers)?;
                break (len, status, framing, max_age, location);
            }
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => {
                return Err(FetchError::new("too_large", "response head too large"));
            }
            Err(e) => return Err(FetchError::new("http", format!("bad response head: {e}"))),
        }
    };
    if (300..400).contains(&status) {
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
    buf.drain(..head_len);
    let body = match framing {
        Framing::Length(len) => {
            if len > MAX_BODY_BYTES {
                return Err(too_large());
            }
            while buf.len() < len {
                let n = s.read(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    return Err(FetchError::new("io", "body cut short"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.truncate(len);
            buf
        }
        Framing::Chunked => loop {
            match dechunk(&buf) {
                Ok(Some(body)) => break body,
                Ok(None) => {}
                Err(e) => return Err(FetchError::new("http", e)),
            }
            // Chunk framing adds a few bytes per chunk; twice the cap is ample for it.
            if buf.len() > 2 * MAX_BODY_BYTES {
                return Err(too_large());
            }
            let n = s.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(FetchError::new("io", "chunked body cut short"));
            }
            buf.extend_from_slice(&chunk[..n]);
        },
        Framing::Close => loop {
            if buf.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            match s.read(&mut chunk).await {
                Ok(0) => break buf,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A TLS peer that closes without close_notify: the JSON parse catches a cut.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break buf,
                Err(e) => return Err(io(e)),
            }
        },
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(Fetched { body, max_age })
}

fn too_large() -> FetchError {
    FetchError::new(
        "too_large",
        format!("body larger than {MAX_BODY_BYTES} bytes"),
    )
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn read_head(
    headers: &[httparse::Header<'_>],
) -> Result<(Framing, Option<u64>, Option<String>), FetchError> {
    let mut framing = Framing::Close;
    let mut max_age = None;
    let mut no_cache = false;
    let mut location = None;
    for h in headers {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if matches!(framing, Framing::Length(_)) {
                return Err(FetchError::new("http", "two Content-Length headers"));
            }
            if !matches!(framing, Framing::Chunked) {
                let len = value
                    .trim()
                    .parse()
                    .map_err(|_| FetchError::new("http", "bad Content-Length"))?;
                framing = Framing::Length(len);
            }
        } else if h.name.eq_ignore_ascii_case("cache-control") {
            for directive in value.split(',') {
                let d = directive.trim().to_ascii_lowercase();
                if d == "no-store" || d == "no-cache" {
                    no_cache = true;
                } else if let Some(v) = d.strip_prefix("max-age=") {
                    max_age = v.trim_matches('"').parse::<u64>().ok().or(max_age);
                }
            }
        } else if h.name.eq_ignore_ascii_case("location") {
            let shown: String = value
                .chars()
                .take(200)
                .filter(|c| !c.is_control())
                .collect();
            location = Some(shown);
        }
    }
    Ok((framing, if no_cache { Some(0) } else { max_age }, location))
}

/// A whole chunked body out of `raw`, `None` while incomplete.
fn dechunk(raw: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut body = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        if size > MAX_BODY_BYTES || body.len() + size > MAX_BODY_BYTES {
            return Err("chunked body too large");
        }
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers are not read: the body is complete.
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("bad chunk framing");
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_reassembled_and_bounded() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            Some(b"abcde".to_vec())
        );
        assert_eq!(dechunk(b"3\r\nab").unwrap(), None);
        assert_eq!(dechunk(b"3\r\nabc\r\n").unwrap(), None);
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"3\r\nabcXX").is_err());
        assert!(dechunk(format!("{:x}\r\n", MAX_BODY_BYTES + 1).as_bytes()).is_err());
    }

    #[test]
    fn cache_control_gives_max_age_and_no_store_means_zero() {
        let h = |v: &'static [u8]| {
            let headers = [httparse::Header {
                name: "Cache-Control",
                value: v,
            }];
            read_head(&headers).unwrap().1
        };
        assert_eq!(h(b"public, max-age=600"), Some(600));
        assert_eq!(h(b"no-store"), Some(0));
        assert_eq!(h(b"private"), None);
    }
}
