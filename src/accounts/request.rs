//! An identity request as the endpoints see it, read off the Pingora session: the bounded
//! body, the content type, the query, the credential the edge already parsed, and the client
//! address (through the trusted proxies) for the rate limits.

use std::net::{IpAddr, SocketAddr};

use bytes::{Bytes, BytesMut};
use pingora::prelude::Session;

use super::endpoints::{Endpoint, Identity, Reply, Request};
use crate::problem::{Code, Problem};

/// Largest request body an identity endpoint reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Reads the request and runs the endpoint. `token`: the credential the edge found (already
/// known not to be ambiguous).
pub async fn serve(
    identity: &Identity,
    session: &mut Session,
    endpoint: Endpoint,
    token: Option<&[u8]>,
) -> Result<Reply, Problem> {
    let body = read_body(session, MAX_BODY_BYTES).await?;
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::from([0, 0, 0, 0]), SocketAddr::ip);
    let req = session.req_header();
    let forwarded = req
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let request = Request {
        endpoint,
        content_type: req
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(http::HeaderValue::as_bytes),
        body,
        query: req.uri.query(),
        token,
        client_ip: identity.trusted_proxies.client_key(peer, forwarded),
    };
    identity.handle(request).await
}

/// Reads a request body of at most `limit` bytes: 413 beyond it, 400 when the client breaks off.
async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, Problem> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Problem::new(Code::PayloadTooLarge));
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(Problem::new(Code::PayloadTooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => {
                return Err(
                    Problem::new(Code::BadRequest).detail("The request body could not be read")
                );
            }
        }
    }
}
